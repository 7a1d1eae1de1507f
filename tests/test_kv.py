"""The KV buffers of a batch prefilled row by row: each row's prefix at the start, its own
positions right-aligned before the end, zeros between (the padding, masked out)."""

import torch

from ads_cli.engine.kv import growing_layer, packed_mask, packs, row_buffers, write_row


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
        write_row(buffers, b, layers, 3, end, start=3, own=n)
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


def test_rows_packed_in_one_sequence_are_written_to_their_own_rows():
    """Two rows computed as one sequence after the prefix: each gets the prefix and its own span."""
    prefix = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    spans = [torch.full((1, 2, 4, 4), 1.0), torch.full((1, 2, 2, 4), 2.0)]
    k = torch.cat([prefix, *spans], 2)
    buffers = row_buffers([(k, -k)], 2, 3 + 4 + 1)
    write_row(buffers, 0, [(k, -k)], 3, 7, start=3, own=4)
    write_row(buffers, 1, [(k, -k)], 3, 7, start=7, own=2)
    kb, vb = buffers[0]
    assert torch.equal(kb[:, :, :3], prefix.expand(2, -1, -1, -1)) and torch.equal(vb[:, :, :3], -prefix.expand(2, -1, -1, -1))
    assert torch.all(kb[0, :, 3:7] == 1.0) and torch.all(kb[1, :, 5:7] == 2.0) and torch.all(vb[1, :, 5:7] == -2.0)
    assert not kb[1, :, 3:5].any() and not kb[:, :, 7:].any()


def test_a_packed_row_sees_the_prefix_and_itself_only():
    mask = packed_mask(2, [3, 0, 2])[0, 0]
    assert mask.shape == (5, 7) and mask.dtype == torch.bool
    assert mask[:, :2].all()  # the prefix, for every token
    own = mask[:, 2:]
    assert own[:3, :3].equal(torch.ones(3, 3, dtype=torch.bool).tril())  # row 0: causal within itself
    assert own[3:, 3:].equal(torch.ones(2, 2, dtype=torch.bool).tril())  # row 2 (row 1 has no tokens)
    assert not own[:3, 3:].any() and not own[3:, :3].any()  # nothing of the other rows


def test_packs_are_consecutive_and_within_the_budget():
    assert packs([100, 60, 50, 10, 10, 300, 5], 128) == [[0], [1, 2, 3], [4], [5], [6]]
    assert packs([3, 3, 3], 0) == [[0], [1], [2]]
    assert packs([], 128) == []
