"""The local engine: transformers on this machine's CPU, fp32.

- `generate`: batched (sorted by length, left-padded, one `model.generate` per batch). Each
  row's prompt is computed on its own first (no padding; short rows packed into one sequence
  where each sees only itself), and the batch's rows are decoded together from there
  (`ROW_PREFILL`, `PACK_TOKENS`, `_prefilled_cache`). Greedy
  is deterministic; sampling draws each prompt's tokens from its own seeded generator, so a
  result does not depend on which batch the prompt fell in.
- Shared-prefix reuse: when the prompts of a call share a long token prefix (the collected data
  in the policy's context, the optimizer's fixed instructions and exemplars), its KV cache is
  computed once and every batch continues from it (each batch's rows repeat its tensors; it is
  never modified). The last two prefixes are kept between calls: a trajectory's prompts are
  answered (`generate`) and then scored (`loglikelihood`) after the same prefix.
- Decoding writes each step's keys and values into a KV buffer allocated once per batch
  (`GROW_IN_PLACE`), where transformers' DynamicLayer concatenates, copying the whole cache at
  every step; the numbers are the same.
- Batches are cut by rows (`batch_size`) and by tokens (`batch_tokens`): rows are sorted by
  length, longest first, and a batch holds at most `batch_tokens` // (its longest row, prefix and
  new tokens included) rows. A batch's KV cache and activations grow with rows x length, so
  long prompts go fewer at a time (`token_batches`).
- `loglikelihood`: the log-probability of a continuation given a context.
"""

from __future__ import annotations

import collections

from ..cache import CallCache
from ..progress import log
from .base import Decoding, Generation, Request, Scoring, TokenizerModel, cut_at_stop, token_batches
from .grammar import GrammarProcessor
from .kv import (batch_cache, copy_cache, dynamic_layer, growing_cache, growing_layer, packed_mask, packs, row_buffers, shallow_copy,
                 write_row)
from .weights import _torch, trim_heap

MIN_SHARED_PREFIX = 64  # tokens; below this the copy of the KV cache costs more than it saves
KEPT_PREFIXES = 2  # prefix KV caches kept between calls (a 500-token prefix of the 135M model: 23 MB)
# generate writes each step's keys and values into a buffer allocated once per batch and layer
# instead of concatenating (transformers' DynamicLayer copies the whole cache at every step);
# the benchmark turns it off to measure the difference
GROW_IN_PLACE = True
# generate computes each row's prompt on its own, then decodes the batch's rows together
# (`_prefilled_cache`); the benchmark turns it off to prefill the left-padded batch as one
ROW_PREFILL = True
# rows whose prompts (all but their last tokens) add up to at most this many tokens are computed
# together as one sequence, each seeing only the prefix and itself (`kv.packed_mask`): a forward
# pass reads all the weights, so short rows after a shared prefix go one pass for several; 0: each
# row alone
PACK_TOKENS = 128


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


class LocalModel(TokenizerModel):
    """A transformers causal LM in this process; `model_id` is its weights' hash."""

    def __init__(self, model, tokenizer, model_id: str, name: str, batch_size: int = 16, cache: CallCache | None = None,
                 role: str = "model", batch_tokens: int = 0):
        self.model, self.tok, self.role = model, tokenizer, role
        self._model_id, self.name = model_id, name
        self.batch_size, self.batch_tokens = batch_size, batch_tokens
        self.cache = cache or CallCache(None)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.eos_ids = self._eos_ids()
        self._prefixes: collections.OrderedDict[tuple[int, ...], object] = collections.OrderedDict()

    @property
    def model_id(self) -> str:
        return self._model_id

    def forget_prefixes(self) -> None:
        """Drop the prefix KV caches kept between calls (benchmarks start each timing without them)."""
        self._prefixes.clear()

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tok.eos_token_id is not None:
            ids.add(self.tok.eos_token_id)
        return ids

    # ------------------------------------------------------------ prompts

    def payload(self, prompt, chat: bool) -> str:
        return self.render(prompt, chat)  # the cache key hashes the rendered text

    def _encode(self, rendered: str, reserve: int) -> tuple[list[int], bool]:
        ids = self.tok(rendered, add_special_tokens=False).input_ids
        limit = self.max_context - reserve
        if len(ids) > limit:
            log.warning("prompt of %d tokens is longer than the context allows (%d); keeping its last %d tokens", len(ids), limit, limit)
            return ids[-limit:], True
        return ids, False

    # ------------------------------------------------------------ generation

    def _generate(self, requests: list[Request], decoding: Decoding, progress):
        encoded = {r.index: self._encode(r.payload, decoding.max_new_tokens) for r in requests}
        seeds = {r.index: r.seed or 0 for r in requests}
        needed = {r.index for r in requests if r.needed}
        order = sorted(encoded, key=lambda i: -len(encoded[i][0]))
        # every prompt keeps at least one token of its own: its logits start the answer
        prefix, prefix_cache = self._shared_prefix([encoded[i][0] for i in order], [1] * len(order))
        widths = [len(encoded[i][0]) + decoding.max_new_tokens for i in order]
        for batch in self._needed_batches(order, widths, needed, progress):
            outputs = self._generate_batch([encoded[i][0][len(prefix):] for i in batch], decoding, [seeds[i] for i in batch],
                                           prefix, prefix_cache)
            for i, (text, n_new) in zip(batch, outputs):
                yield i, Generation(text, len(encoded[i][0]), n_new, truncated=encoded[i][1])

    def _generate_batch(self, batch_ids, decoding: Decoding, seeds, prefix=(), prefix_cache=None):
        """One `model.generate` call; returns (text, new tokens) per row.

        Rows are left-padded. With a shared `prefix` whose KV cache is given, the layout is
        prefix, padding, own tokens: the padding is masked out and position ids follow the mask,
        so each row sees exactly its own prompt while the prefix is never recomputed.
        """
        torch = _torch()
        max_new_tokens, temperature, stop, grammar = decoding.max_new_tokens, decoding.temperature, decoding.stop, decoding.grammar
        pad = self.tok.pad_token_id
        own, attention = self._left_padded(len(prefix), batch_ids)
        shared = torch.tensor(list(prefix), dtype=torch.long).reshape(1, -1).expand(len(batch_ids), -1)
        input_ids = torch.cat([shared, own], 1)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, top_p=None, top_k=None, temperature=None)
        processors = [GrammarProcessor(grammar, self.tok, input_ids.shape[1])] if grammar is not None else []
        if temperature > 0:  # after the grammar: it samples among the tokens the grammar allows
            processors.append(_SeededSampler([torch.Generator().manual_seed(s) for s in seeds], temperature))
        if processors:
            kwargs["logits_processor"] = processors
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tok)
        cache = self._prefilled_cache(batch_ids, len(prefix), prefix_cache, max_new_tokens) if ROW_PREFILL else None
        if cache is None and GROW_IN_PLACE:
            cache = growing_cache(prefix_cache, self.model, max_new_tokens)
        if cache is None and prefix_cache is not None:
            cache = copy_cache(prefix_cache, len(batch_ids))
        if cache is not None:
            kwargs["cache"] = cache
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        return [self._decode(row[input_ids.shape[1]:], stop) for row in out]

    def _prefilled_cache(self, rows: list[list[int]], prefix_len: int, prefix_cache, reserve: int):
        """The batch's KV cache with every row's prompt but its last token computed, each row on
        its own: the layout `_left_padded` gives (prefix, padding, own tokens), the padding's
        keys and values zero (it is masked out). `generate` then starts from the rows' last
        tokens together, and decodes them in one batch.

        A row alone has no padding to compute and no mask to apply, and its activations stay in
        the processor's caches: prefill of 16 prompts of 173-384 tokens took 3.7 s row by row
        against 7.3 s in left-padded batches. Short rows (after a shared prefix, most of a
        policy call's rows are a question of a few dozen tokens) go several to a forward pass,
        one after the other in one sequence that each sees only the prefix and itself
        (`PACK_TOKENS`, `kv.packed_mask`): a pass of a few tokens costs what reading the
        weights costs, whatever its length.

        The cache's layers grow in place with room for `reserve` more positions (or concatenate,
        without GROW_IN_PLACE). None when there is nothing to prefill, or when the model's layers
        are not all full-attention `DynamicLayer`s or its generation config names a cache
        implementation of its own (the caller then prefills the batch as one)."""
        from transformers.cache_utils import DynamicCache

        torch = _torch()
        total = prefix_len + max(len(r) for r in rows) - 1  # positions cached: all but the rows' last tokens
        cache = batch_cache(prefix_cache, self.model) if total else None
        if cache is None:
            return None
        room = reserve if GROW_IN_PLACE else 0
        buffers = None
        with torch.inference_mode():
            for pack in packs([len(r) - 1 for r in rows], PACK_TOKENS):
                own = [rows[b][:-1] for b in pack]
                past = shallow_copy(prefix_cache) if prefix_cache is not None else DynamicCache(config=self.model.config)
                if any(own):
                    ids = [t for o in own for t in o]
                    positions = torch.tensor([[prefix_len + j for o in own for j in range(len(o))]])
                    mask = packed_mask(prefix_len, [len(o) for o in own]) if len(pack) > 1 else None
                    past = self.model(input_ids=torch.tensor([ids]), position_ids=positions, attention_mask=mask, cache=past,
                                      use_cache=True, logits_to_keep=1).cache
                layers = [(layer.keys, layer.values) for layer in past.layers]
                if buffers is None:
                    buffers = row_buffers(layers, len(rows), total + room)
                start = prefix_len
                for b, o in zip(pack, own):
                    write_row(buffers, b, layers, prefix_len, total, start, len(o))
                    start += len(o)
                del past, layers
        cache.layers = [growing_layer().filled(kbuf, vbuf, total) if GROW_IN_PLACE else dynamic_layer(kbuf, vbuf)
                        for kbuf, vbuf in buffers]
        return cache

    def _left_padded(self, prefix_len: int, rows: list[list[int]]):
        """The layout of a batch after a shared prefix of `prefix_len` tokens: each row's own
        tokens left-padded to the longest, and the attention mask over prefix + padding + own
        tokens (the padding masked out). Returns (own token ids, attention mask)."""
        torch = _torch()
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        attention = torch.tensor([[1] * prefix_len + [0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return ids, attention

    def _decode(self, new_ids, stop) -> tuple[str, int]:
        tokens = new_ids.tolist()
        n = len(tokens)
        for j, t in enumerate(tokens):
            if t in self.eos_ids:
                n = j + 1
                break
        return cut_at_stop(self.tok.decode(tokens[:n], skip_special_tokens=True), stop), n

    # ------------------------------------------------------------ scoring

    def _loglikelihood(self, pairs: list[Scoring], progress):
        """Teacher-forced log-probabilities, batched, with a shared prefix computed once.

        Pairs of one call usually share their start (the policy's prompt with the collected
        data, then the question and its reference differ): that common token prefix is run
        once and every batch continues from a copy of its KV cache, as `generate` does. Rows
        are left-padded after the prefix, so that every continuation ends the row and only the
        last logits are computed. The prefix and batches are laid out over all pairs of the
        call; a batch without a `needed` pair is skipped.
        """
        torch = _torch()
        rows = {}
        for pair in pairs:
            ctx = self.tok(pair.context, add_special_tokens=False).input_ids
            cont = self.tok(pair.continuation, add_special_tokens=False).input_ids
            ids = (ctx + cont)[-self.max_context:]
            rows[pair.index] = (ids, min(len(cont), len(ids) - 1))
        needed = {p.index for p in pairs if p.needed}
        order = sorted(rows, key=lambda i: (-len(rows[i][0]), i))
        prefix, prefix_cache = self._shared_prefix([rows[i][0] for i in order], [rows[i][1] + 1 for i in order])
        for batch in self._needed_batches(order, [len(rows[i][0]) for i in order], needed, progress):
            input_ids, attention = self._left_padded(len(prefix), [rows[i][0][len(prefix):] for i in batch])
            positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, len(prefix):]
            keep = max(rows[i][1] for i in batch) + 1
            kwargs = {"cache": copy_cache(prefix_cache, len(batch))} if prefix_cache is not None else {}
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                                    logits_to_keep=keep, **kwargs).logits
                del kwargs
                # each row's own positions only: log-softmax is per position, so the numbers are
                # the whole batch's, without a second rows x keep x vocabulary tensor
                scores = []
                for row, i in enumerate(batch):
                    ids, n = rows[i]
                    targets = torch.tensor(ids[len(ids) - n:])
                    # logit k of the kept ones predicts the token after input position width - keep + k
                    logprobs = torch.log_softmax(logits[row, keep - n - 1: keep - 1].float(), dim=-1)
                    scores.append(float(logprobs.gather(-1, targets[:, None]).sum()))
                del logits, logprobs
            yield from zip(batch, scores)

    def _needed_batches(self, order: list[int], widths: list[int], needed: set[int], progress):
        """The batches of `token_batches` over `order`, which holds every row of the call (cached
        ones too), longest first, so a batch is the same on a first and on a resumed run. A batch
        without a `needed` row is skipped; progress counts the needed rows. After each batch the
        heap's free pages may go back to the system (`trim_heap`)."""
        for start, stop in token_batches(widths, self.batch_size, self.batch_tokens):
            batch = order[start:stop]
            n_needed = len(needed.intersection(batch))
            if n_needed:
                yield batch
                trim_heap()
                progress.step(n_needed)

    def _shared_prefix(self, seqs: list[list[int]], own: list[int]) -> tuple[list[int], object]:
        """The token prefix all `seqs` share, and its KV cache, when it is long enough to pay.

        Row i keeps at least `own[i]` tokens of its own after the prefix (the tokens whose
        logits are needed). Below MIN_SHARED_PREFIX tokens, or for a single row, nothing is shared.
        """
        if len(seqs) < 2:
            return [], None
        shared = min(_common_prefix(seqs), min(len(s) - o for s, o in zip(seqs, own)))
        if shared < MIN_SHARED_PREFIX:
            return [], None
        prefix = seqs[0][:shared]
        key = tuple(prefix)
        if key in self._prefixes:  # the same computation as below would give the same tensors
            self._prefixes.move_to_end(key)
            return prefix, self._prefixes[key]
        torch = _torch()
        with torch.inference_mode():
            # only the KV cache is wanted: one position of logits, not the whole prefix's
            cache = self.model(input_ids=torch.tensor([prefix]), use_cache=True, logits_to_keep=1).cache
        self._prefixes[key] = cache
        while len(self._prefixes) > KEPT_PREFIXES:
            self._prefixes.popitem(last=False)
        return prefix, cache


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for j in range(n):
        t = first[j]
        if any(s[j] != t for s in seqs):
            return j
    return n


