"""A fake model for the logic tests: deterministic, instant, and implementing `Model`.

Registered as the backend `fake` through the entry-point group `ads.backends` (this folder is
put on sys.path and PYTHONPATH by conftest.py), the way a plugin would add a backend. Only the
tests use it; the product always runs a real model.

Its world is small but not trivial, so that the pipeline's logic has something to find:
- the policy answers a question with the last capitalised word of the first context line that
  shares a word with the question, or, with no such line, with a word of the question itself;
  so retrieving the right passage turns a wrong answer into a right one;
- the optimizer (a completion prompt) writes 0-2 calls whose arguments are words of the task
  block, obeying the grammar's line starts; greedy is a function of the prompt, sampling of
  the prompt and its seed;
- a demonstrate prompt gets Q/A pairs on its topic;
- the log-likelihood of a continuation rises with the share of its words found in the context.
`ADS_FAKE_DELAY` (seconds per request) slows it down for the tests that kill a run midway.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time

from ads_cli.engine.base import Generation, Model, cut_at_stop, prompt_text, shape_prompt

_WORD = re.compile(r"[A-Za-z][\w'-]*")


def _rng(*parts) -> random.Random:
    return random.Random(hashlib.sha256(repr(parts).encode()).hexdigest())


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


class FakeModel(Model):
    def __init__(self, cache, batch_size: int = 8, name: str = "fake"):
        self.cache, self.batch_size, self.name = cache, batch_size, name
        self.delay = float(os.environ.get("ADS_FAKE_DELAY", "0") or 0)

    @property
    def model_id(self) -> str:
        return "fake-v1"

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def payload(self, prompt, chat):
        return shape_prompt(prompt, chat)

    def render(self, prompt, chat=True):
        shaped = shape_prompt(prompt, chat)
        return shaped if not chat else "".join(f"{m['role']}: {m['content']}\n" for m in shaped) + "assistant: "

    def _generate(self, requests, decoding, progress):
        for r in requests:
            if self.delay:
                time.sleep(self.delay)
            if isinstance(r.payload, str):
                text = self._trajectory(r.payload, r.seed, decoding.grammar)
            else:
                text = self._chat(r.payload)
            text = " ".join(text.split(" ")[: decoding.max_new_tokens]) if "\n" not in text else text
            text = cut_at_stop(text, decoding.stop)
            yield r.index, Generation(text, self.count_tokens(prompt_text(r.payload)), max(1, self.count_tokens(text)))
            progress.step(1)

    def _chat(self, messages: list[dict]) -> str:
        question = str(messages[-1].get("content") or "")
        if "Q: <question>" in question:  # the demonstrate API asks for pairs on a topic
            topic = question.split(" about ", 1)[-1].split(".", 1)[0]
            return "\n".join(f"Q: What is {topic} number {k}?\nA: {topic} {k}" for k in range(1, 4))
        context = "\n".join(str(m.get("content") or "") for m in messages[:-1])
        if "\n\nAnswer briefly: " in question:  # the answer API puts its passages first
            context, question = question.rsplit("\n\nAnswer briefly: ", 1)
        asked = {w.lower() for w in _words(question) if len(w) > 3}
        for line in context.splitlines():
            if asked & {w.lower() for w in _words(line)}:
                capitalised = [w for w in _words(line) if w[0].isupper()]
                if capitalised:
                    return capitalised[-1]
        words = _words(question)
        return _rng(question).choice(words) if words else "nothing"

    def _trajectory(self, prompt: str, seed, grammar) -> str:
        block = prompt.rsplit("Task:", 1)[-1]
        words = [w for w in _words(block) if len(w) > 3 and w not in ("Task", "Example", "Calls", "correct", "model", "said", "score")]
        rng = _rng(prompt, seed)
        apis = [o.rstrip(":") for o in (grammar.options if grammar else ["retrieve:", "demonstrate:", "answer:"]) if o.endswith(":")]
        n_calls = rng.choice([0, 1, 1, 2])
        if not n_calls or not words:
            return "none"
        if grammar is None and rng.random() < 0.2:
            return "I would search for it"  # unconstrained, a small model sometimes writes prose
        lines = [f"{rng.choice(apis)}: {' '.join(rng.sample(words, min(2, len(words))))}" for _ in range(n_calls)]
        return "\n".join(lines) + "\nend"

    def _loglikelihood(self, pairs, progress):
        for p in pairs:
            seen = {w.lower() for w in _words(p.context)}
            words = _words(p.continuation) or [p.continuation]
            found = sum(w.lower() in seen for w in words)
            yield p.index, -2.0 * len(words) + 1.5 * found - 0.01 * len(p.continuation)
            progress.step(1)


def make(params: dict, role: str, cache) -> FakeModel:
    return FakeModel(cache, batch_size=params["lm"]["batch_size"], name=f"fake {role}")
