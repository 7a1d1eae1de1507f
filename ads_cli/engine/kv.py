"""KV caches for the local engine: transformers' cache layers copied, grown in place, filled.

A batch continues from a one-row prefix cache that is never modified (`copy_cache`,
`shallow_copy`); `generate` writes each step into a buffer with room for the new tokens
(`growing_layer`); a batch prefilled row by row has its rows' keys and values written into one
left-padded buffer per layer (`row_buffers`, `write_row`).
"""

from __future__ import annotations

import copy
import functools


def copy_cache(cache, rows: int):
    """A KV cache for a batch of `rows` that all continue from the one-row `cache`, which stays
    as it is: the layers are new objects whose key and value tensors `batch_repeat_interleave`
    makes anew (a full-attention layer replaces its tensors when it grows; it never writes into
    them). The one copy of the prefix's tensors is that repeat; no deep copy before it. Other
    layer kinds (sliding windows, recurrent states written in place) are deep-copied."""
    from transformers.cache_utils import DynamicLayer

    if all(type(layer) is DynamicLayer for layer in cache.layers):
        copied = shallow_copy(cache)
    else:
        copied = copy.deepcopy(cache)
    copied.batch_repeat_interleave(rows)
    return copied


def batch_cache(prefix_cache, model):
    """A cache object for one `generate` batch whose layers the caller replaces, continuing from
    the one-row `prefix_cache` (None: empty), which is only read. None when the model's layers
    are not all full-attention `DynamicLayer`s, or its generation config names a cache
    implementation of its own (the caller then does as transformers does)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if getattr(model.generation_config, "cache_implementation", None):
        return None
    cache = copy.copy(prefix_cache) if prefix_cache is not None else DynamicCache(config=model.config)
    if not cache.layers or not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    return cache


def growing_cache(prefix_cache, model, reserve: int):
    """A cache for one `generate` batch whose layers grow in place, with room for `reserve` more
    positions, continuing from the one-row `prefix_cache` (None: empty), which is only read: the
    first update copies the prefix into each row of a new buffer, so there is no batch repeat
    of it first. None where `batch_cache` is."""
    cache = batch_cache(prefix_cache, model)
    if cache is not None:
        cache.layers = [growing_layer().like(layer, reserve) for layer in cache.layers]
    return cache


@functools.cache
def growing_layer():
    """The growing layer class, made on first use (transformers is imported lazily)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A full-attention layer's KV cache that writes new positions into a buffer with room for
        `reserve` more, where transformers' DynamicLayer concatenates and so copies the whole cache
        at every decoding step (28 % of a profiled 16-row, 64-token `generate`). Its keys and values
        are views of the buffer's filled part: the same numbers, in the same shape.

        The buffer is used only while the layer's keys and values are still the views it handed
        out, and only by the layer that made it: anything that replaced them (a batch repeat, a
        crop, a copy of the layer) makes the next update start a new buffer from them."""

        def __init__(self, reserve: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.reserve = reserve
            self._buffer = None  # (id of the owner, keys buffer, values buffer, keys view, values view)

        def reset(self) -> None:
            self._buffer = None
            super().reset()

        @classmethod
        def like(cls, layer, reserve: int):
            grown = cls(reserve)
            grown.keys, grown.values, grown.is_initialized = layer.keys, layer.values, layer.is_initialized
            if layer.is_initialized:
                grown.device = layer.device
            return grown

        @classmethod
        def filled(cls, kbuf, vbuf, n: int):
            """A layer whose first `n` positions are those of the buffers, which have room for more."""
            grown = cls(kbuf.shape[-2] - n)
            grown.lazy_initialization(kbuf, vbuf)
            grown.keys, grown.values = kbuf[..., :n, :], vbuf[..., :n, :]
            grown._buffer = (id(grown), kbuf, vbuf, grown.keys, grown.values)
            return grown

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, m = self.get_seq_length(), key_states.shape[-2]
            b = self._buffer
            if b is None or b[0] != id(self) or b[3] is not self.keys or b[4] is not self.values or n + m > b[1].shape[-2]:
                kbuf = key_states.new_empty((*key_states.shape[:-2], n + m + self.reserve, key_states.shape[-1]))
                vbuf = value_states.new_empty((*value_states.shape[:-2], n + m + self.reserve, value_states.shape[-1]))
                if n:  # a one-row prefix broadcasts over the batch's rows
                    kbuf[..., :n, :].copy_(self.keys)
                    vbuf[..., :n, :].copy_(self.values)
            else:
                kbuf, vbuf = b[1], b[2]
            kbuf[..., n:n + m, :].copy_(key_states)
            vbuf[..., n:n + m, :].copy_(value_states)
            self.keys, self.values = kbuf[..., :n + m, :], vbuf[..., :n + m, :]
            self._buffer = (id(self), kbuf, vbuf, self.keys, self.values)
            return self.keys, self.values

    return GrowingLayer


def shallow_copy(cache):
    """A copy of a cache of DynamicLayers that its updates leave the original of: a DynamicLayer
    concatenates into new tensors, never writing into the ones it holds."""
    copied = copy.copy(cache)
    copied.layers = [copy.copy(layer) for layer in cache.layers]
    return copied


def dynamic_layer(keys, values):
    """A transformers DynamicLayer holding `keys` and `values`."""
    from transformers.cache_utils import DynamicLayer

    layer = DynamicLayer()
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    return layer


def row_buffers(layers, rows: int, positions: int) -> list[tuple]:
    """Zeroed (keys, values) buffers of `rows` rows and `positions` positions, one per layer,
    shaped like the one-row `layers` ((keys, values) pairs)."""
    k, v = next((k, v) for k, v in layers if k is not None and k.numel())
    return [(k.new_zeros((rows, k.shape[1], positions, k.shape[3])), v.new_zeros((rows, v.shape[1], positions, v.shape[3])))
            for _ in layers]


def write_row(buffers, row: int, layers, prefix_len: int, end: int, start: int, own: int) -> None:
    """Row `row` of the buffers gets a one-row cache's (`layers`: (keys, values) pairs) prefix at
    the start and its own positions right before `end`; the positions between stay zero. The
    row's own positions are the cache's `own` positions from `start`: a packed cache
    (`packed_mask`) holds several rows' one after the other after the prefix."""
    for (kbuf, vbuf), (k, v) in zip(buffers, layers):
        if k is None or not k.numel():
            continue
        for buf, t in ((kbuf, k), (vbuf, v)):
            buf[row, :, :prefix_len].copy_(t[0, :, :prefix_len])
            buf[row, :, end - own:end].copy_(t[0, :, start:start + own])


def packed_mask(prefix_len: int, lengths: list[int]):
    """The attention mask of several rows computed as one sequence after a shared prefix of
    `prefix_len` positions (their tokens one after the other, each row's positions counted from
    the prefix): a token sees the prefix and its own row's tokens up to itself, nothing of the
    other rows. Shape (1, 1, tokens, prefix + tokens), True where attention is allowed."""
    from .weights import _torch

    torch = _torch()
    row = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    index = torch.arange(len(row))
    own = (row[:, None] == row[None, :]) & (index[None, :] <= index[:, None])
    mask = torch.cat([torch.ones(len(row), prefix_len, dtype=torch.bool), own], 1)
    return mask[None, None]


def packs(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive indices of `lengths` grouped so that each group's lengths add up to at most
    `budget` (a longer one alone)."""
    groups: list[list[int]] = []
    total = budget + 1
    for i, n in enumerate(lengths):
        if groups and total + n <= budget:
            groups[-1].append(i)
            total += n
        else:
            groups.append([i])
            total = n
    return groups
