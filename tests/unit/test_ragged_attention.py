"""decoding/aux/ragged.py's attention (all rows' new keys and values written in one copy, the
queries split in one call) equals the per-row loop it replaced, bit for bit: rows of very
different lengths, grouped-query heads, rows joining (prefilled in the same forward as the
decoding rows) and leaving, a row alone, in float32 and bfloat16."""

import pytest
import torch
import torch.nn.functional as F

from decoding.aux.ragged import BATCH_KWARG, Packed, RowCache, Segment, ragged_attention

LAYERS, HEADS, KV_HEADS, DIM = 2, 6, 2, 16


class _Layer(torch.nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.layer_idx = index


def _per_row(layer, query, key, value, segments, caches):
    """The attention as the revision before batched writes computed it: each row's keys and
    values written, then attended, one row at a time (into ``caches``, copies of the rows)."""
    outs = []
    for segment, cache in zip(segments, caches, strict=True):
        keys, values = cache.layer(layer)
        a, b = segment.start, segment.start + segment.new
        end = segment.past + segment.new
        keys[0, :, segment.past : end] = key[0, :, a:b]
        values[0, :, segment.past : end] = value[0, :, a:b]
        outs.append(
            F.scaled_dot_product_attention(
                query[:, :, a:b],
                keys[:, :, :end],
                values[:, :, :end],
                is_causal=segment.new > 1,
                enable_gqa=True,
            )
        )
    return torch.cat(outs, dim=2).transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_writes_equal_the_per_row_loop(dtype):
    generator = torch.Generator().manual_seed(0)
    shape = (LAYERS, KV_HEADS, DIM)
    rows: dict[int, RowCache] = {}
    twins: dict[int, RowCache] = {}
    grown = set()
    # Prompt lengths per row key, by the step they join at: 1 token to 300 tokens.
    joins = {0: {1: 300, 2: 1, 3: 7}, 3: {4: 150, 5: 2}, 70: {6: 90}, 77: {7: 40}}
    # From step 77 one row alone: prefilled, then decoding (the one-row path).
    leaves = {5: [2], 40: [1], 75: [4], 77: [3, 5, 6]}
    for step in range(80):  # > HEADROOM: rows' caches grow (are moved) mid-flight
        for key in leaves.get(step, []):
            rows.pop(key)
            twins.pop(key)
        new_tokens = {key: 1 for key in rows}
        for key, length in joins.get(step, {}).items():
            rows[key] = RowCache(shape, dtype, torch.device("cpu"))
            twins[key] = RowCache(shape, dtype, torch.device("cpu"))
            new_tokens[key] = length
        segments, twin_segments, start = [], [], 0
        for key, new in new_tokens.items():
            for table, out in ((rows, segments), (twins, twin_segments)):
                cache = table[key]
                if cache.cached and cache.capacity < cache.cached + new:
                    grown.add(key)
                cache.reserve(cache.cached + new)
                out.append(Segment(cache, cache.cached, new, start))
            start += new
        n = start
        batch = Packed(segments, LAYERS)
        for layer in range(LAYERS):
            query = torch.randn(1, HEADS, n, DIM, generator=generator).to(dtype)
            key = torch.randn(1, KV_HEADS, n, DIM, generator=generator).to(dtype)
            value = torch.randn(1, KV_HEADS, n, DIM, generator=generator).to(dtype)
            out, _ = ragged_attention(
                _Layer(layer), query, key, value, None, **{BATCH_KWARG: batch}
            )
            expected = _per_row(layer, query, key, value, twin_segments, list(twins.values()))
            assert out.shape == (1, n, HEADS, DIM)
            assert torch.equal(out, expected)
        assert batch.seen == LAYERS
        for key, new in new_tokens.items():
            for table in (rows, twins):
                table[key].cached += new
            valid = rows[key].cached
            assert torch.equal(rows[key].store[:, :, :, :valid], twins[key].store[:, :, :, :valid])
    assert {3, 4} <= grown  # written and attended after their caches were moved
