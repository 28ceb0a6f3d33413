"""Tests for cheers_pl.eval.retrieval: image→caption top-1."""

import torch

from cheers_pl.eval.retrieval import retrieval_top1


def _pairs(b: int = 8, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img = torch.randn(b, d, generator=g)
    return img, img + 0.1 * torch.randn(b, d, generator=g)


def test_retrieval_top1() -> None:
    img, txt = _pairs()
    assert retrieval_top1(img, txt) == 1.0
    assert retrieval_top1(img, txt.roll(1, dims=0)) == 0.0
    half = torch.cat([txt[:4], txt[4:].roll(1, dims=0)])
    assert retrieval_top1(img, half) == 0.5
