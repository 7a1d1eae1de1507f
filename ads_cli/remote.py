"""The server backend: the model calls of `lm.LM`, answered by an OpenAI-compatible server.

Any endpoint that speaks the OpenAI API serves: vLLM, llama.cpp's server, llama-cpp-python,
TGI. A role (policy or optimizer) uses it with `lm.<role>_backend: openai`; the section
`openai_<role>` says where the server is and how to talk to it.

- Chat prompts go to /chat/completions, raw completions (the optimizer's) to /completions.
- At most `concurrency` requests are in flight (a thread pool over one httpx client); each has
  a `timeout`.
- 429, 408, 409, 5xx, timeouts, dropped connections and unreadable answers are retried
  `max_retries` times with exponential backoff (`backoff` seconds, doubling; a Retry-After
  header wins). A request that still fails is recorded as failed (`Generation.error`, empty
  text, not cached, so a rerun asks again) and the run goes on.
- A server that cannot be reached after the retries, or that refuses the key or the model
  (401, 403, 404), stops the run with one line. Every answer received before is already in the
  call cache, so a rerun continues from there.
- Cost is the response's `usage` (prompt + completion tokens), the unit the local engine counts.
  The call cache is the local engine's, keyed by the served model's name.
- `loglikelihood` asks /completions to echo the prompt with its logprobs; a server that does not
  return prompt logprobs gets an error that says so.
- The policy's context budget counts tokens with the tokenizer of `lm.<role>`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Sequence

import httpx

from .cache import CallCache, call_key
from .errors import AdsError
from .lm import (Generation, LineGrammar, Prompt, cached_loglikelihoods, check_prompts, cut_at_stop, generation_key,
                 shape_prompt)
from .progress import log, track

RETRY_STATUS = frozenset({408, 409, 429})
FATAL_STATUS = {401: "refused the API key", 403: "refused the API key", 404: "has no such endpoint or model"}
MAX_RETRY_AFTER = 60.0


MAX_FAILURES_IN_A_ROW = 8  # more than this and the server is not answering usefully: stop


def served_identity(settings: dict) -> str:
    """What the call cache and the execute journal know a served model by: its name, plus the
    server-specific settings that change its answers."""
    extra = settings["extra_body"]
    return f"openai:{settings['model']}" + (f":{call_key(extra)[:12]}" if extra else "")


class RequestFailed(Exception):
    """One request failed for good (after its retries): the caller records it and goes on."""


class ServerUnreachable(Exception):
    """No connection to the server after the retries: the run stops."""


class _Stopped(Exception):
    """Another request found the server unreachable; this one gives up without waiting."""


def _snippet(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return text[:160] + ("..." if len(text) > 160 else "")


class OpenAIBackend:
    """`generate`, `loglikelihood`, `count_tokens` and `all_cached` over HTTP, like `lm.LM`."""

    def __init__(self, settings: dict, section: str, cache: CallCache, count_tokens: Callable[[str], int]):
        self.settings, self.section = settings, section
        self.base_url = settings["base_url"].rstrip("/")
        self.model_name = settings["model"]
        self.weights_hash = served_identity(settings)
        self.name = f"{self.base_url}#{self.model_name}"
        self.batch_size = settings["concurrency"]
        self.cache = cache
        self.count_tokens = count_tokens
        self.extra_body = dict(settings["extra_body"])
        headers = {}
        if settings["api_key_env"]:
            key = os.environ.get(settings["api_key_env"])
            if not key:
                raise AdsError(f"params: {section}.api_key_env: environment variable {settings['api_key_env']} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(
            base_url=self.base_url + "/", headers=headers, timeout=settings["timeout"],
            limits=httpx.Limits(max_connections=settings["concurrency"], max_keepalive_connections=settings["concurrency"]),
        )
        self.stats = {"requests": 0, "retries": 0, "failed": 0}
        self._failures_in_a_row = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # ------------------------------------------------------------ one request

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def request(self, path: str, body: dict, parse: Callable[[dict], Any]) -> Any:
        """POST `body`, retrying what may pass; `parse` turns the JSON into a result or raises on garbage."""
        attempts = self.settings["max_retries"] + 1
        last, unreachable, wait = "", False, 0.0
        for attempt in range(attempts):
            if attempt:
                self._count("retries")
                if self._stop.wait(wait):
                    raise _Stopped()
            elif self._stop.is_set():
                raise _Stopped()
            wait = self.settings["backoff"] * 2 ** attempt
            self._count("requests")
            try:
                response = self.client.post(path, json={**self.extra_body, **body, "model": self.model_name})
            except httpx.TimeoutException:
                last, unreachable = f"no answer within {self.settings['timeout']:g}s", False
                continue
            except httpx.DecodingError as e:  # a body that does not decode (bad gzip, say) is garbage
                last, unreachable = f"unreadable answer ({e})", False
                continue
            except httpx.TransportError as e:  # refused, reset, name not resolved
                last, unreachable = f"cannot connect ({type(e).__name__}: {e})", True
                continue
            unreachable = False
            status = response.status_code
            if status in FATAL_STATUS:
                raise AdsError(f"{self.section}: {self.base_url}/{path} {FATAL_STATUS[status]} (HTTP {status}: {_snippet(response)});"
                               f" check {self.section}.base_url, .model and .api_key_env")
            if status in RETRY_STATUS or status >= 500:
                last = f"HTTP {status}: {_snippet(response)}"
                try:
                    wait = min(float(response.headers.get("retry-after", "")), MAX_RETRY_AFTER)
                except ValueError:
                    pass
                continue
            if status >= 400:  # the request itself is wrong (too long a prompt, say): asking again will not help
                raise RequestFailed(f"HTTP {status}: {_snippet(response)}")
            try:
                return parse(response.json())
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
                last = f"unreadable answer ({type(e).__name__}: {e}): {_snippet(response)}"
        if unreachable:
            raise ServerUnreachable(last)
        raise RequestFailed(f"{last} (after {attempts} attempts)")

    def _run(self, jobs: list[tuple[str, dict, Callable[[dict], Any]]], desc: str):
        """Yield (job index, result or RequestFailed) as requests finish, `concurrency` at a time.

        A server found unreachable stops the run: queued requests do not start, the answers of
        requests already in flight are still yielded (so the caller caches them), then AdsError.
        """
        if not jobs:  # all answered from the call cache
            return
        self._stop.clear()
        down: ServerUnreachable | None = None
        with track(desc, total=len(jobs)) as progress, ThreadPoolExecutor(self.batch_size) as pool:
            futures = {pool.submit(self.request, *job): j for j, job in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    try:
                        result: Any = future.result()
                    except RequestFailed as e:
                        result = e
                    except ServerUnreachable as e:
                        down = down or e
                        self._stop.set()
                        continue
                    except _Stopped:
                        continue
                    self._tally(result)
                    yield futures[future], result
                    progress.step(1)
            finally:
                self._stop.set()  # on any exit, queued requests do not start
        if down is not None:
            raise AdsError(f"{self.section}: cannot reach {self.base_url} after {self.settings['max_retries'] + 1} attempts"
                           f" ({down}); every answer received so far is kept in the call cache:"
                           f" start the server and run again")

    def _tally(self, result: Any) -> None:
        if not isinstance(result, RequestFailed):
            self._failures_in_a_row = 0
            return
        self._count("failed")
        self._failures_in_a_row += 1
        if self._failures_in_a_row > MAX_FAILURES_IN_A_ROW:
            raise AdsError(f"{self.section}: {self._failures_in_a_row} requests in a row failed, the last: {result};"
                           f" check {self.section} (model, extra_body) and the server's log")

    # ------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 48, temperature: float = 0.0, seed: int = 0,
                 stop: Sequence[str] | None = None, chat: bool = True, desc: str = "generate",
                 grammar: LineGrammar | None = None) -> list[Generation]:
        stop = list(stop or [])
        payloads = [shape_prompt(p, chat) for p in prompts]
        check_prompts(prompts, ["".join(m.get("content") or "" for m in p) if isinstance(p, list) else p for p in payloads])
        results: list[Generation | None] = [None] * len(prompts)
        todo: list[tuple[int, str, tuple]] = []
        for i, payload in enumerate(payloads):
            key, prompt_seed = generation_key(self.weights_hash, payload, max_new_tokens, temperature, seed, stop, grammar)
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = Generation(**hit, cached=True)
                continue
            body: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": 1.0}
            body["messages" if chat else "prompt"] = payload
            if stop:
                body["stop"] = stop
            if prompt_seed is not None:
                body["seed"] = prompt_seed
            if grammar is not None:
                body["grammar"] = grammar.to_gbnf()
            todo.append((i, key, ("chat/completions" if chat else "completions", body, lambda data: self._parse(data, chat, stop))))
        for j, result in self._run([job for _, _, job in todo], desc):
            i, key, _ = todo[j]
            if isinstance(result, RequestFailed):
                log.warning("%s: request %d failed: %s", self.section, i + 1, result)
                results[i] = Generation("", 0, 0, error=str(result))
            else:
                self.cache.put(key, result.cache_record())
                results[i] = result
        return results  # type: ignore[return-value]

    @staticmethod
    def _usage(data: dict) -> tuple[int, int]:
        usage = data["usage"]
        prompt_tokens, completion_tokens = usage["prompt_tokens"], usage.get("completion_tokens", 0)
        if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
            raise TypeError("usage token counts are not integers")
        return prompt_tokens, completion_tokens

    def _parse(self, data: dict, chat: bool, stop: list[str]) -> Generation:
        choice = data["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        if not isinstance(text, str):
            raise TypeError("the answer's text is not a string")
        return Generation(cut_at_stop(text, stop), *self._usage(data))

    def all_cached(self, prompts: Sequence[Prompt], max_new_tokens: int = 48, temperature: float = 0.0,
                   seed: int = 0, stop: Sequence[str] | None = None, chat: bool = True) -> bool:
        return all(self.cache.peek(generation_key(self.weights_hash, shape_prompt(p, chat), max_new_tokens, temperature,
                                                  seed, list(stop or []))[0]) for p in prompts)

    # ------------------------------------------------------------ scoring

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation given its context, from prompt logprobs."""
        results, misses = cached_loglikelihoods(self.cache, self.weights_hash, pairs)
        todo = []
        for i, key, context, continuation in misses:
            body = {"prompt": context + continuation, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
            todo.append((i, key, ("completions", body, lambda data, c=context, n=len(continuation): _continuation_logprob(data, c, n))))
        for j, result in self._run([job for _, _, job in todo], "loglikelihood"):
            i, key, _ = todo[j]
            if isinstance(result, RequestFailed):
                raise AdsError(f"{self.section}: likelihood scoring needs prompt logprobs from {self.base_url}"
                               f" (/completions with echo and logprobs), and the request failed: {result}")
            self.cache.put(key, result)
            results[i] = result
        return results  # type: ignore[return-value]


def _continuation_logprob(data: dict, context: str, n_chars: int) -> float:
    """Sum the echoed prompt tokens that overlap the continuation (the last `n_chars` of the prompt).

    OpenAI's convention: entry i holds log p(token i | tokens before it). llama-cpp-python
    (0.3.36; abetlen/llama-cpp-python#1983) echoes each token with the distribution *after* it,
    shifted by one, which would give wrong numbers without any error. The request is greedy with
    one new token, so the shift shows: the last prompt entry's top candidate is then exactly the
    token the server went on to generate. Such answers are refused, as are answers without logprobs.
    """
    choice = data["choices"][0]
    logprobs = choice.get("logprobs")
    if not logprobs or not logprobs.get("token_logprobs"):
        raise RequestFailed("the answer has no logprobs")
    offsets, tokens, values = logprobs["text_offset"], logprobs["tokens"], logprobs["token_logprobs"]
    start, end = len(context), len(context) + n_chars
    prompt = [j for j, off in enumerate(offsets) if off < end]
    generated = choice["text"][end:]
    top = logprobs.get("top_logprobs") or []
    if prompt and generated and len(top) > prompt[-1] and top[prompt[-1]]:
        last = top[prompt[-1]]
        if max(last, key=last.get) == generated:
            raise RequestFailed("its prompt logprobs are shifted by one token (each token is scored by the"
                                " distribution after it; a llama-cpp-python bug, abetlen/llama-cpp-python#1983)")
    chosen = [values[j] for j in prompt if offsets[j] + len(tokens[j]) > start]
    if not chosen or any(v is None for v in chosen):
        raise RequestFailed("the echoed prompt has no logprobs for the continuation")
    return float(sum(chosen))
