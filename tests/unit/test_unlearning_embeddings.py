"""The gate's MiniLM with its texts packed into shared rows: the same embeddings as the
package's sentence-transformers pipeline (up to float noise), whatever a text's companions,
and the packing itself (every text once, rows and forwards within their bounds)."""

import random

import pytest
import torch

from decoding.unlearning.embeddings import minilm, pack

WORDS = [
    "the",
    "a",
    "lighthouse",
    "keeper",
    "Paris",
    "tower",
    "eiffel",
    "river",
    "city",
    "story",
    "wrote",
    "of",
    "in",
    "about",
]


def _pipeline(texts: list[str]) -> torch.Tensor:
    model = minilm().model
    return model.encode(
        texts, batch_size=len(texts), convert_to_tensor=True, normalize_embeddings=True
    ).float()


def test_packed_embeddings_are_the_pipelines():
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 60))) for _ in range(40)]
    texts += ["x", ".", "Paris", " ".join(WORDS * 40)]  # the last one is truncated to 256 pieces
    packed = minilm().encode(texts)
    assert packed.shape == (len(texts), minilm().dim)
    assert (packed - _pipeline(texts)).abs().max() < 1e-5
    assert torch.allclose(packed.norm(dim=-1), torch.ones(len(texts)), atol=1e-6)


def test_a_texts_embedding_does_not_depend_on_its_companions():
    alone = minilm().encode(["Where is the Eiffel tower?"])
    crowd = minilm().encode(["a", "Where is the Eiffel tower?", "the river " * 30, "b"])
    assert (crowd[1] - alone[0]).abs().max() < 1e-5
    assert minilm().encode([]).shape == (0, minilm().dim)


@pytest.mark.parametrize("seed", range(5))
def test_packing_places_every_text_once_within_the_bounds(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 256) for _ in range(rng.randint(1, 80))]
    forwards = pack(lengths, 64, 1024)
    placed = [t for forward in forwards for row in forward for t in row]
    assert sorted(placed) == list(range(len(lengths)))
    for forward in forwards:
        widths = [sum(lengths[t] for t in row) for row in forward]
        assert all(w <= 64 or len(row) == 1 for w, row in zip(widths, forward, strict=True))
        assert widths == sorted(widths, reverse=True)  # the first row is the widest
        assert len(forward) == 1 or len(forward) * widths[0] <= min(1024, 1.25 * sum(widths))


def test_short_texts_share_a_row_and_a_long_one_has_its_own():
    # Longest first, each into the first row with room: 250 + 5, then 3 + 2 (its own forward:
    # padded to 255 it would cost over PAD_SLACK times its pieces).
    assert pack([3, 5, 2, 250], 256, 4096) == [[[3, 1]], [[0, 2]]]
    assert pack([60, 50, 5], 64, 4096) == [[[0], [1, 2]]]  # 2 x 60 padded for 115 real
    # Rows of 64: the 250-piece text alone, the short ones together; a forward of 2 x 250
    # padded pieces is over 400, so the short row gets its own.
    assert pack([3, 5, 2, 250], 64, 400) == [[[3]], [[1, 0, 2]]]
