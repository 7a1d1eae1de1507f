"""The policy: answering a task's examples, and scoring those answers with the task's metric."""

from __future__ import annotations

import re
from typing import Any

from ..cache import call_key
from ..engine import lora
from ..engine.base import Generation, Model
from ..progress import log
from .metrics import score
from .tasks import last_message


def example_messages(example_input: Any, context: str = "") -> list[dict]:
    """An example's input as chat messages; `context` (collected data) goes in front of it."""
    messages = [{"role": "user", "content": example_input}] if isinstance(example_input, str) else [dict(m) for m in example_input]
    if context:
        messages.insert(0, {"role": "system", "content": f"Use this information if it helps.\n{context}"})
    return messages


def answer_examples(model: Model, tasks: list[dict], split: str, max_new_tokens: int, desc: str) -> dict[str, list[dict]]:
    """task id -> [{answer, score, tokens}] for each example of `split` ("observed" or "heldout")."""
    prompts, where = [], []
    for task in tasks:
        for j, example in enumerate(task[split]):
            prompts.append(example_messages(example["input"]))
            where.append((task, j))
    gens: list[Generation] = model.generate(prompts, max_new_tokens=max_new_tokens, desc=desc) if prompts else []
    out: dict[str, list[dict]] = {t["id"]: [] for t in tasks}
    for (task, j), g in zip(where, gens):
        ref = task[split][j]["reference"]
        out[task["id"]].append(scored(task["metric"], g, ref))
    return out


def scored(metric: str, g: Generation, reference: str) -> dict:
    """One answer's record; a failed server request scores 0 and says why."""
    record = {"answer": g.text, "score": score(metric, g.text, reference), "tokens": g.cost}
    if g.error:
        record["error"] = g.error
    return record


_WORDS = re.compile(r"\w+")


def item_text(item: dict) -> str:
    """How a collected item reads in the policy's context."""
    kind = item.get("kind")
    if kind == "demonstration":
        return f"Q: {item['instruction']}\nA: {item['response']}"
    if kind == "qa":
        return f"Q: {item['question']}\nA: {item['answer']}"
    title = item.get("title")
    return f"{title}: {item['text']}" if title else str(item.get("text", ""))


def build_context(task: dict, items: list[dict], budget_tokens: int, count_tokens) -> str:
    """The collected items, most relevant first, under a token budget.

    Relevance is word overlap with the task's name and observed inputs (never the held-out
    ones). One context per trajectory, the same for all its held-out questions: the prompts
    then share a prefix whose KV cache the engine computes once.
    """
    if not items:
        return ""
    task_words = set(_WORDS.findall(" ".join([task["name"]] + [last_message(e["input"]) for e in task["observed"]]).lower()))
    texts = list(dict.fromkeys(item_text(i) for i in items))  # identical items once, first kept

    def relevance(pair):
        index, text = pair
        words = set(_WORDS.findall(text.lower()))
        return (-len(words & task_words) / (1 + len(words)) ** 0.5, index)

    chosen, used = [], 0
    for _, text in sorted(enumerate(texts), key=relevance):
        n = count_tokens(text)
        if used + n > budget_tokens:
            continue
        chosen.append(text)
        used += n
    return "\n\n".join(chosen)


def score_with_context(model: Model, task: dict, context: str | list[str], max_new_tokens: int, split: str = "heldout", desc: str = "score") -> list[dict]:
    """The policy answers `split` with `context` in its prompt; returns [{answer, score, tokens}].

    One context for all examples (their prompts then share a prefix), or one per example.
    """
    examples = task[split]
    contexts = context if isinstance(context, list) else [context] * len(examples)
    prompts = [example_messages(e["input"], c) for e, c in zip(examples, contexts)]
    gens = model.generate(prompts, max_new_tokens=max_new_tokens, desc=desc)
    return [scored(task["metric"], g, e["reference"]) for e, g in zip(examples, gens)]


def item_pairs(policy: Model, items: list[dict]) -> list[tuple[str, str]]:
    """Training pairs for a LoRA update: demonstrations and QA pairs become (rendered
    instruction, response); passages become plain text."""
    pairs = []
    for item in items:
        if item.get("kind") == "demonstration":
            pairs.append((policy.payload(item["instruction"], True), item["response"]))
        elif item.get("kind") == "qa":
            pairs.append((policy.payload(item["question"], True), item["answer"]))
        else:
            pairs.append(("", item_text(item)))
    return pairs


def score_after_lora(policy: Model, task: dict, items: list[dict], params: dict) -> tuple[list[dict], float]:
    """The `lora` update: fine-tune a fresh adapter on `items`, answer the held-out examples,
    remove the adapter. Returns (scored answers, seconds of fine-tuning; 0 when cached)."""
    max_tokens = params["lm"]["max_new_tokens"]
    tuned = lora.renamed(policy, call_key("lora", policy.model_id, [item_text(i) for i in items], params["train"]))
    if tuned.all_cached([example_messages(e["input"]) for e in task["heldout"]], max_tokens):
        return score_with_context(tuned, task, "", max_tokens), 0.0  # this adapter answered before
    scored, seconds = lora.with_fresh_adapter(policy, params["train"], item_pairs(policy, items), tuned.model_id,
                                              lambda model: score_with_context(model, task, "", max_tokens, desc="train: policy after LoRA"))
    log.info("lora: %s, %d items, %.1fs", task["id"], len(items), seconds)
    return scored, seconds
