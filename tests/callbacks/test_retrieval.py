"""Tests of the retrieval callback: collects K pairs, skips text-only rows, logs top-1."""

import types

import pytest
import torch

from cheers_pl.callbacks.retrieval import RetrievalCallback, RetrievalConfig


class FakeStage:
    """Embeds an image by its mean pixel value and a caption by its number: caption i matches image i."""

    def __init__(self, wrong: int = 0) -> None:
        self.wrong = wrong
        self.logged: dict[str, float] = {}
        self.seen: list[str] = []

    def contrastive_embed(self, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen = list(texts)
        values = images.mean(dim=(1, 2, 3))
        img = torch.stack([torch.cos(values * 3), torch.sin(values * 3)], dim=1)
        nums = torch.tensor([float(t.split()[-1]) for t in texts])
        nums[: self.wrong] = nums[: self.wrong].roll(1)
        txt = torch.stack([torch.cos(nums * 3), torch.sin(nums * 3)], dim=1)
        return img, txt

    def log(self, name: str, value: torch.Tensor, **kwargs) -> None:
        self.logged[name] = float(value)


def _batch(start: int, n: int) -> types.SimpleNamespace:
    values = torch.linspace(-0.9, 0.9, 40)[start : start + n]
    images = values.view(-1, 1, 1, 1).expand(n, 3, 4, 4).clone()
    task = torch.zeros(n, dtype=torch.long)
    task[0] = 2  # text-only: never a candidate
    meta = [{"caption": f"value {v.item():.6f}"} for v in values]
    return types.SimpleNamespace(images=images, task=task, meta=meta)


@pytest.mark.parametrize(("wrong", "expected"), [(0, 1.0), (4, 0.5)])
def test_logs_top1_over_the_first_k_pairs(wrong: int, expected: float) -> None:
    cb, stage = RetrievalCallback(RetrievalConfig(num_candidates=8)), FakeStage(wrong)
    trainer = types.SimpleNamespace(sanity_checking=False)
    cb.on_validation_epoch_start(trainer, stage)
    for i, start in enumerate((0, 6, 12)):
        cb.on_validation_batch_end(trainer, stage, None, _batch(start, 6), i)
    cb.on_validation_epoch_end(trainer, stage)
    assert len(stage.seen) == 8  # 5 + 3 image rows, text-only rows skipped, capped at K
    assert stage.logged["val/retrieval_top1"] == pytest.approx(expected)


def test_too_few_candidates_warns_and_k_is_validated() -> None:
    cb, stage = RetrievalCallback(RetrievalConfig(num_candidates=32)), FakeStage()
    trainer = types.SimpleNamespace(sanity_checking=False)
    cb.on_validation_epoch_start(trainer, stage)
    cb.on_validation_batch_end(trainer, stage, None, _batch(0, 6), 0)
    with pytest.warns(UserWarning, match="num_candidates"):
        cb.on_validation_epoch_end(trainer, stage)
    assert stage.logged["val/retrieval_top1"] == 1.0
    with pytest.raises(ValueError, match="num_candidates"):
        RetrievalConfig(num_candidates=1)
