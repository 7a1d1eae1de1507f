"""The model interface: every model call in ads goes through a `Model`.

A backend (the local transformers engine, an OpenAI-compatible server, or a plugin registered
under the entry-point group `ads.backends`) implements small hooks: `model_id`, `render`,
`count_tokens`, `payload` and the two uncached computations (`TokenizerModel` gives `render`
and `count_tokens` to a backend with a transformers tokenizer). `Model` itself owns what all
backends share: the call-cache loop (look up, compute what is missing, store), prompt checks,
cache keys and progress. So a cached answer is the same whichever backend wrote it, and a
failed request (`Generation.error`) is never cached, whichever backend failed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from ..cache import CallCache, call_key
from ..errors import AdsError
from ..progress import phase, track
from .grammar import LineGrammar

Prompt = str | list[dict]  # a completion prompt, or chat messages (a string is one user message)


@dataclass
class Generation:
    """One answer: its text and what it cost.

    `prompt_tokens + completion_tokens` is the cost, in the unit every stage reports. `cached`
    says it came from the call cache, `truncated` that the prompt was cut to fit the context,
    `error` that the request failed (server backends): the text is then empty and nothing is
    cached, so a rerun asks again.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    truncated: bool = False
    error: str | None = None

    def cache_record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("cached", "error")}

    @property
    def cost(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Decoding:
    """How to decode one `generate` call (the same for all its prompts)."""

    max_new_tokens: int
    temperature: float
    stop: list[str]
    chat: bool
    grammar: LineGrammar | None


@dataclass(frozen=True)
class Request:
    """One prompt of a `generate` call: `payload` is what the model reads, `seed` its own
    sampling seed (None when greedy). `needed` is False when the cache holds its answer: a
    backend may skip it, but batches the prompts as if it were there."""

    index: int
    key: str
    payload: str | list[dict]
    seed: int | None
    needed: bool = True


@dataclass(frozen=True)
class Scoring:
    """One (context, continuation) pair of a `loglikelihood` call. `needed` is False when the
    cache holds its value: a backend may skip it, but groups the pairs as if it were there."""

    index: int
    key: str
    context: str
    continuation: str
    needed: bool = True


class LikelihoodUnavailable(AdsError):
    """The model cannot score likelihoods (a server without correct prompt logprobs)."""


class Model(ABC):
    """What the stages need from a model: generation, scoring, token counts and the cache.

    `name` is for people (logs, manifests); `model_id` names what decides the answers (a
    weights hash, or a served model's name) and goes into every cache key; `batch_size` is how
    many prompts a backend handles at once.
    """

    name: str
    cache: CallCache
    batch_size: int
    role: str = "model"  # policy or optimizer, once `roles.load_role` loaded it

    @property
    @abstractmethod
    def model_id(self) -> str: ...

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's tokenizer (the policy's context budget counts them)."""

    @abstractmethod
    def render(self, prompt: Prompt, chat: bool = True) -> str:
        """The prompt as the text the model reads: a chat prompt through the model's chat
        template, ending where the assistant's answer starts. Likelihoods are scored after it."""

    @abstractmethod
    def payload(self, prompt: Prompt, chat: bool) -> str | list[dict]:
        """What the model reads for `prompt`; the cache key hashes it. The local engine renders
        the chat template here; a server receives the messages themselves."""

    @abstractmethod
    def _generate(self, requests: list[Request], decoding: Decoding, progress) -> Iterator[tuple[int, Generation]]:
        """Answer the requests; yield (request.index, Generation) as answers arrive, for at least
        every `needed` one. `requests` are all the prompts of the call, in its order, so that a
        batch is the same whatever the cache held (as for `_loglikelihood`)."""

    @abstractmethod
    def _loglikelihood(self, pairs: list[Scoring], progress) -> Iterator[tuple[int, float]]:
        """Score the pairs; yield (pair.index, log-probability of the continuation) for at least
        every `needed` one. `pairs` are all the pairs of the call, in its order, so that a batch
        is the same whatever the cache held: a resumed call gives the values of an uninterrupted
        one (a value still depends on the call's other pairs and on the batch size)."""

    # ------------------------------------------------------------ the shared cache loop

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 48, temperature: float = 0.0, seed: int = 0,
                 stop: Sequence[str] | None = None, chat: bool = True, desc: str = "generate",
                 grammar: LineGrammar | None = None) -> list[Generation]:
        """One Generation per prompt, in order. Greedy when `temperature` is 0; otherwise each
        prompt samples with its own seed (derived from `seed` and the prompt), so an answer does
        not depend on the other prompts of the call. Text is cut at the first `stop` string."""
        decoding = Decoding(max_new_tokens, temperature, list(stop or []), chat, grammar)
        check_prompts(prompts)
        results: list[Generation | None] = [None] * len(prompts)
        requests: list[Request] = []
        for i, prompt in enumerate(prompts):
            payload = self.payload(prompt, chat)
            key, prompt_seed = generation_key(self.model_id, payload, max_new_tokens, temperature, seed, decoding.stop, grammar)
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = Generation(**hit, cached=True)
            requests.append(Request(i, key, payload, prompt_seed, needed=hit is None))
        todo = [r for r in requests if r.needed]
        if todo:
            name = f"{self.role}: generate" + (" (constrained)" if grammar is not None else "")
            with track(desc, total=len(todo)) as progress, phase(name):
                for i, gen in self._generate(requests, decoding, progress):
                    if not requests[i].needed:
                        continue
                    if gen.error is None:
                        self.cache.put(requests[i].key, gen.cache_record())
                    results[i] = gen
        return results  # type: ignore[return-value]

    def all_cached(self, prompts: Sequence[Prompt], max_new_tokens: int = 48, temperature: float = 0.0,
                   seed: int = 0, stop: Sequence[str] | None = None, chat: bool = True) -> bool:
        """True when `generate` with these arguments would be answered from the cache alone."""
        return all(self.cache.peek(generation_key(self.model_id, self.payload(p, chat), max_new_tokens, temperature,
                                                  seed, list(stop or []))[0]) for p in prompts)

    def all_scored(self, pairs: Sequence[tuple[str, str]]) -> bool:
        """True when `loglikelihood(pairs)` would be answered from the cache alone."""
        return all(self.cache.peek(loglik_key(self.model_id, c, r)) for c, r in pairs)

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], desc: str = "loglikelihood") -> list[float]:
        """The summed log-probability of each continuation given its (already rendered) context.

        When any pair misses the cache, the backend sees all the pairs of the call (the cached
        ones marked not `needed`), so it batches them the same way on a first run and on a
        resumed one; only the missing values are computed and stored.
        """
        results: list[float | None] = [None] * len(pairs)
        scorings: list[Scoring] = []
        for i, (context, continuation) in enumerate(pairs):
            if not continuation:
                raise AdsError(f"pair {i + 1}: empty continuation")
            key = loglik_key(self.model_id, context, continuation)
            results[i] = self.cache.get(key)
            scorings.append(Scoring(i, key, context, continuation, needed=results[i] is None))
        todo = [s for s in scorings if s.needed]
        if todo:
            with track(desc, total=len(todo)) as progress, phase(f"{self.role}: loglikelihood"):
                for i, value in self._loglikelihood(scorings, progress):
                    if scorings[i].needed:
                        self.cache.put(scorings[i].key, value)
                        results[i] = value
        return results  # type: ignore[return-value]


class TokenizerModel(Model):
    """A model whose tokenizer (`tok`, a transformers tokenizer) is in this process: it renders
    chat prompts with the tokenizer's chat template and counts tokens with it."""

    tok: Any

    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False).input_ids)

    def render(self, prompt: Prompt, chat: bool = True) -> str:
        """Chat prompts go through the tokenizer's chat template; `chat=False` is raw completion."""
        shaped = shape_prompt(prompt, chat)
        return shaped if not chat else self.tok.apply_chat_template(shaped, add_generation_prompt=True, tokenize=False)


# ------------------------------------------------------------ prompt helpers and keys


def shape_prompt(prompt: Prompt, chat: bool) -> str | list[dict]:
    """A completion prompt as its string, a chat prompt as its messages (a string is one user message)."""
    if not chat:
        if not isinstance(prompt, str):
            raise AdsError("a completion prompt (chat=False) must be a string")
        return prompt
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def prompt_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "".join(str(m.get("content") or "") for m in prompt)


def check_prompts(prompts: Sequence[Prompt]) -> None:
    for i, prompt in enumerate(prompts):
        if not prompt_text(prompt).strip():
            raise AdsError(f"prompt {i + 1} is empty")


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string, stripped."""
    for s in stop:
        cut = text.find(s)
        if cut >= 0:
            text = text[:cut]
    return text.strip()


def loglik_key(model_id: str, context: str, continuation: str) -> str:
    """The call-cache key of one (context, continuation) score."""
    return call_key("loglik", model_id, context, continuation)


def generation_key(model_id: str, payload, max_new_tokens: int, temperature: float, seed: int, stop: list[str],
                   grammar: LineGrammar | None = None) -> tuple[str, int | None]:
    """The call-cache key of one generation, and the prompt's own sampling seed.

    `model_id` names the weights (a sha256 locally, the served model's name for a server);
    `payload` is what the model reads: the rendered text locally, the messages for a server.
    """
    prompt_seed = int(call_key(seed, payload)[:8], 16) if temperature > 0 else None
    parts = ["generate", model_id, payload, max_new_tokens, temperature, prompt_seed, stop]
    if grammar is not None:
        parts.append(grammar.key())
    return call_key(*parts), prompt_seed


def token_batches(widths: list[int], batch_size: int, batch_tokens: int = 0) -> list[tuple[int, int]]:
    """(start, stop) of each batch over rows whose padded widths are `widths`, longest first:
    at most `batch_size` rows, and at most `batch_tokens` tokens counted as rows x the batch's
    first (longest) width; a row wider than the budget goes alone. 0: no token limit.

    Measured on 16 of the optimizer's longest prompts (712-1,001 tokens, 40 new tokens, 40 training
    tasks): all 16 rows at once took 28.2 s and raised the peak RSS by 674 MiB; with 6,144
    tokens 23.1 s, and the peak stayed at the model's loading peak."""
    if any(a < b for a, b in zip(widths, widths[1:])):
        raise ValueError("token_batches: widths must be sorted longest first")
    spans, start = [], 0
    while start < len(widths):
        rows = batch_size if not batch_tokens else max(1, min(batch_size, batch_tokens // max(1, widths[start])))
        spans.append((start, min(len(widths), start + rows)))
        start = spans[-1][1]
    return spans
