"""The blocked top-k (decoding/topk.py) returns what ``torch.topk`` returns: same values, same
indices (inputs without ties), same order, for row widths with and without a partial last
block, leading dimensions, ``-inf`` and ``NaN`` entries."""

import pytest
import torch

from decoding.topk import argmax, topk

INF = torch.inf


@pytest.mark.parametrize("columns", [49152, 50000, 700, 64 * 8, 100])
@pytest.mark.parametrize("k", [1, 5, 32])
def test_blocked_top_k_equals_torch_top_k(columns, k):
    gen = torch.Generator().manual_seed(columns + k)
    for scale in (0.1, 3.0, 30.0):  # flat to peaked rows
        scores = torch.randn(9, columns, generator=gen, dtype=torch.float64) * scale
        scores = scores.float()  # random float32 draws: ties are (almost) impossible
        if len(set(scores.flatten().tolist())) != scores.numel():
            continue
        want = scores.topk(k, dim=-1)
        values, indices = topk(scores, min(k, columns))
        assert torch.equal(values, want.values)
        assert torch.equal(indices, want.indices)


def test_the_top_entries_crowded_in_one_block_or_in_the_tail():
    scores = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    scores[0, 64:96] += 100.0  # all of the top 32 in one block
    scores[1, 960:1000] += 100.0  # in the partial last block (1000 = 15 * 64 + 40)
    scores[2, ::64] += 100.0  # one in each block
    want = scores.topk(32, dim=-1)
    values, indices = topk(scores, 32, block=16)
    assert torch.equal(values, want.values) and torch.equal(indices, want.indices)


def test_leading_dimensions_masks_and_nan():
    scores = torch.randn(2, 3, 4096, generator=torch.Generator().manual_seed(1))
    scores[..., ::3] = -INF  # what the engine masked
    scores[1, 2, 777] = torch.nan  # topk ranks a NaN first
    want = scores.topk(8, dim=-1)
    values, indices = topk(scores, 8)
    assert values.shape == (2, 3, 8)
    torch.testing.assert_close(values, want.values, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(indices, want.indices)
    assert indices[1, 2, 0] == 777


@pytest.mark.parametrize("columns", [49152, 1000, 100, 64])
def test_blocked_argmax_equals_torch_argmax_ties_and_nan_included(columns):
    gen = torch.Generator().manual_seed(columns)
    scores = torch.randint(0, 5, (12, columns), generator=gen).float()  # many ties
    scores[1] = 7.0  # every entry ties: the first wins
    scores[2, columns - 1] = 9.0  # the maximum in the last column (a partial block, at 1000)
    scores[3, columns // 2] = torch.nan  # a NaN is the maximum
    scores[4, columns - 1] = torch.nan  # ... also in the tail
    scores[4, 0] = 100.0
    scores[5, ::3] = -INF
    scores[6] = -INF  # every token masked
    assert torch.equal(argmax(scores), scores.argmax(dim=-1))
    assert torch.equal(argmax(scores, block=16), scores.argmax(dim=-1))
