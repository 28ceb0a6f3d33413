"""Tests for cheers_pl.objective.contrastive: SigLIP sigmoid loss and top-1 retrieval."""

import math

import pytest
import torch

from cheers_pl.objective.contrastive import SigmoidContrastiveLoss, SigmoidContrastiveLossConfig


def _pairs(b: int = 8, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img = torch.randn(b, d, generator=g)
    return img, img + 0.1 * torch.randn(b, d, generator=g)


def test_initial_parameters() -> None:
    loss = SigmoidContrastiveLoss()
    assert math.isclose(loss.log_temperature.item(), math.log(10.0), rel_tol=1e-6)
    assert loss.bias.item() == -10.0


def test_matches_the_written_formula() -> None:
    loss = SigmoidContrastiveLoss(SigmoidContrastiveLossConfig(init_temperature=3.0, init_bias=-1.0))
    img, txt = _pairs(4, 5)
    cos = torch.nn.functional.cosine_similarity(img[:, None], txt[None], dim=-1)
    z = 2 * torch.eye(4) - 1
    expected = -torch.log(torch.sigmoid(z * (3.0 * cos - 1.0))).mean()
    assert torch.allclose(loss(img, txt), expected, atol=1e-6)


def test_matched_pairs_score_lower_than_shuffled() -> None:
    loss = SigmoidContrastiveLoss()
    img, txt = _pairs()
    assert loss(img, txt) < loss(img, txt.roll(1, dims=0))


def test_invariant_to_embedding_scale() -> None:
    loss = SigmoidContrastiveLoss()
    img, txt = _pairs()
    assert torch.allclose(loss(img, txt), loss(5 * img, 0.2 * txt), atol=1e-6)


def test_gradients_reach_parameters_and_embeddings() -> None:
    loss = SigmoidContrastiveLoss()
    img, txt = (x.requires_grad_() for x in _pairs())
    loss(img, txt).backward()
    for t in (loss.log_temperature, loss.bias, img, txt):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"\(4, 8\) and \(3, 8\)"):
        SigmoidContrastiveLoss()(torch.zeros(4, 8), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="init_temperature must be > 0, got 0"):
        SigmoidContrastiveLossConfig(init_temperature=0)
