"""The KV buffers of a batch prefilled row by row: each row's prefix at the start, its own
positions right-aligned before the end, zeros between (the padding, masked out)."""

import torch

from ads_cli.engine.kv import growing_layer, row_buffers, write_row


def one_row(prefix: torch.Tensor, own: int, layer: int):
    """A one-row cache's (keys, values) for a layer: the prefix, then `own` positions of its own."""
    mine = torch.full((1, 2, own, 4), float(10 * layer + own))
    return torch.cat([prefix, mine], 2), torch.cat([prefix, -mine], 2)


def test_rows_are_right_aligned_after_their_prefix():
    prefix = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    own = [5, 2, 0]  # the longest row first, as the engine sorts them
    end = 3 + own[0]
    buffers = None
    for b, n in enumerate(own):
        layers = [one_row(prefix, n, layer) for layer in range(2)]
        buffers = buffers or row_buffers(layers, len(own), end + 4)
        write_row(buffers, b, layers, 3, end)
    assert len(buffers) == 2
    for layer, (k, v) in enumerate(buffers):
        assert k.shape == (3, 2, end + 4, 4)
        for b, n in enumerate(own):
            assert torch.equal(k[b, :, :3], prefix[0]) and torch.equal(v[b, :, :3], prefix[0])
            assert torch.all(k[b, :, end - n:end] == 10 * layer + n) and torch.all(v[b, :, end - n:end] == -(10 * layer + n))
            assert not k[b, :, 3:end - n].any() and not v[b, :, 3:end - n].any()  # the padding
        assert not k[:, :, end:].any()  # room for the new tokens


def test_a_filled_layer_writes_new_positions_into_its_buffer():
    k, v = torch.zeros(2, 1, 6, 4), torch.zeros(2, 1, 6, 4)
    k[:, :, :3], v[:, :, :3] = 1.0, 2.0
    layer = growing_layer().filled(k, v, 3)
    assert layer.get_seq_length() == 3
    keys, values = layer.update(torch.full((2, 1, 1, 4), 7.0), torch.full((2, 1, 1, 4), 8.0))
    assert keys.shape == (2, 1, 4, 4) and keys.data_ptr() == k.data_ptr()  # the same buffer, not a copy
    assert torch.all(keys[:, :, 3] == 7.0) and torch.all(values[:, :, :3] == 2.0) and torch.all(values[:, :, 3] == 8.0)
