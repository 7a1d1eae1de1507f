"""The server backend: a `Model` whose calls an OpenAI-compatible server answers.

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
from typing import Any, Callable

import httpx

from ..cache import CallCache, call_key
from ..errors import AdsError
from ..progress import log
from .base import Decoding, Generation, LikelihoodUnavailable, Prompt, Request, Scoring, TokenizerModel, cut_at_stop, shape_prompt

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


class OpenAIModel(TokenizerModel):
    """A model served over HTTP; `model_id` is the served model's name (plus `extra_body`)."""

    def __init__(self, settings: dict, section: str, cache: CallCache, tokenizer):
        """`tokenizer` is the served model's, loaded here: the policy's context budget counts
        tokens with it, and likelihood contexts are rendered with its chat template."""
        self.settings, self.section = settings, section
        self.base_url = settings["base_url"].rstrip("/")
        self.model_name = settings["model"]
        self._model_id = served_identity(settings)
        self.name = f"{self.base_url}#{self.model_name}"
        self.batch_size = settings["concurrency"]
        self.cache = cache
        self.tok = tokenizer
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

    @property
    def model_id(self) -> str:
        return self._model_id

    def payload(self, prompt: Prompt, chat: bool) -> str | list[dict]:
        return shape_prompt(prompt, chat)

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

    def _run(self, jobs: list[tuple[str, dict, Callable[[dict], Any]]], progress):
        """Yield (job index, result or RequestFailed) as requests finish, `concurrency` at a time.

        A server found unreachable stops the run: queued requests do not start, the answers of
        requests already in flight are still yielded (so the caller caches them), then AdsError.
        """
        if not jobs:  # all answered from the call cache
            return
        self._stop.clear()
        down: ServerUnreachable | None = None
        with ThreadPoolExecutor(self.batch_size) as pool:
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

    def _generate(self, requests: list[Request], decoding: Decoding, progress):
        requests = [r for r in requests if r.needed]  # each prompt is its own request: the cached ones are not sent
        chat, stop = decoding.chat, decoding.stop
        jobs = []
        for r in requests:
            body: dict[str, Any] = {"max_tokens": decoding.max_new_tokens, "temperature": decoding.temperature, "top_p": 1.0}
            body["messages" if chat else "prompt"] = r.payload
            if stop:
                body["stop"] = stop
            if r.seed is not None:
                body["seed"] = r.seed
            if decoding.grammar is not None:
                body["grammar"] = decoding.grammar.to_gbnf()
            jobs.append(("chat/completions" if chat else "completions", body, lambda data: self._parse(data, chat, stop)))
        for j, result in self._run(jobs, progress):
            if isinstance(result, RequestFailed):
                log.warning("%s: request %d failed: %s", self.section, requests[j].index + 1, result)
                result = Generation("", 0, 0, error=str(result))
            yield requests[j].index, result

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

    # ------------------------------------------------------------ scoring

    def _loglikelihood(self, pairs: list[Scoring], progress):
        """Sums of log-probabilities of each continuation given its context, from prompt logprobs.
        Each pair is its own request, so the cached ones are not asked again."""
        pairs = [p for p in pairs if p.needed]
        jobs = []
        for pair in pairs:
            body = {"prompt": pair.context + pair.continuation, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
            jobs.append(("completions", body,
                         lambda data, c=pair.context, n=len(pair.continuation): _continuation_logprob(data, c, n)))
        for j, result in self._run(jobs, progress):
            if isinstance(result, RequestFailed):
                raise LikelihoodUnavailable(f"{self.section}: likelihood scoring needs prompt logprobs from {self.base_url}"
                               f" (/completions with echo and logprobs), and the request failed: {result}")
            yield pairs[j].index, result


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
