"""Tests of the contrastive towers (text tower + image head + sigmoid loss)."""

import pytest
import torch

from cheers_pl.model.contrastive_towers import ContrastiveTowers, ContrastiveTowersConfig


def _towers() -> ContrastiveTowers:
    return ContrastiveTowers(ContrastiveTowersConfig(vocab_size=50, dim=32, num_layers=1, embed_dim=16, max_len=12), 24)


def test_shapes_and_padding_invariance() -> None:
    towers = _towers().eval()
    ids = torch.randint(0, 50, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, :3] = False  # left padding
    emb = towers.embed_texts(ids, mask)
    assert emb.shape == (3, 16)
    other = ids.clone()
    other[0, :3] = 7  # changing padded positions must not change the embedding
    assert torch.allclose(towers.embed_texts(other, mask), emb, atol=1e-5)
    shorter = towers.embed_texts(ids[:1, 3:], mask[:1, 3:])
    assert not torch.allclose(shorter, emb[:1], atol=1e-5)  # position embeddings start at column 0
    assert towers.embed_images(torch.randn(3, 10, 24)).shape == (3, 16)


def test_gradients_reach_every_parameter() -> None:
    towers = _towers()
    ids, mask = torch.randint(0, 50, (4, 6)), torch.ones(4, 6, dtype=torch.bool)
    loss = towers.loss(towers.embed_images(torch.randn(4, 5, 24)), towers.embed_texts(ids, mask))
    loss.backward()
    missing = [n for n, p in towers.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_training_separates_matched_from_shuffled_pairs() -> None:
    torch.manual_seed(0)
    towers = _towers()
    ids, mask = torch.randint(0, 50, (8, 6)), torch.ones(8, 6, dtype=torch.bool)
    feats = torch.randn(8, 5, 24)
    opt = torch.optim.Adam(towers.parameters(), lr=3e-3)
    for _ in range(60):
        loss = towers.loss(towers.embed_images(feats), towers.embed_texts(ids, mask))
        opt.zero_grad()
        loss.backward()
        opt.step()
    img, txt = towers.embed_images(feats), towers.embed_texts(ids, mask)
    assert towers.loss(img, txt) < towers.loss(img, txt.roll(1, dims=0))
    assert (towers.similarity(img, txt).argmax(dim=1) == torch.arange(8)).float().mean() >= 0.75


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        ContrastiveTowersConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="embed_dim"):
        ContrastiveTowersConfig(embed_dim=0)
    towers = _towers()
    with pytest.raises(ValueError, match="max_len"):
        towers.embed_texts(torch.zeros(1, 13, dtype=torch.long), torch.ones(1, 13, dtype=torch.bool))
    with pytest.raises(ValueError, match="real token"):
        towers.embed_texts(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="semantic tokens"):
        towers.embed_images(torch.randn(2, 5, 23))
