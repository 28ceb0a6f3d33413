"""Understanding accuracy: exact-match VQA per question category as a validation callback.

The callback collects the understanding examples of the validation batches (task 0 with a question and an answer;
captioning rows, category "caption", are excluded), answers them with the stage's public `answer`, and logs
exact-match accuracy per category as `val/vqa_<category>` (count, color, shape, relation, texture, digit; any
other category is pooled as "other") and `val/vqa_overall` (over all questions, MMBench-style). Answers are
compared after `normalize_answer` (lower-case, punctuation removed, whitespace collapsed). The scoring is a pure
function, `exact_match_by_category`, that the evaluate command reuses.

Under data parallelism every rank answers ceil(max_examples / world_size) examples, the counts are summed across
ranks, and ranks with fewer chunks run discarded extra `answer` calls so every rank makes the same number of
forward passes (FSDP).

References:
    Liu et al., "MMBench: Is Your Multi-modal Model an All-around Player?", 2023 (per-category exact match).
    Cheers (arXiv 2603.12793) — DESIGN.md §5.

Legend: B examples, H/W image size.
"""

import string
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch

from cheers_pl.callbacks.common import PeriodicValidationCallback, check_positive, per_rank_quota

UNDERSTANDING_TASK = 0  # `Batch.task` value of understanding examples (cheers_pl.data.batch)
VQA_CATEGORIES: tuple[str, ...] = ("count", "color", "shape", "relation", "texture", "digit", "other")
EXCLUDED_CATEGORIES: tuple[str, ...] = ("caption",)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation removed, whitespace stripped and collapsed: ' Three.' -> 'three'."""
    return " ".join(str(text).lower().translate(_PUNCTUATION).split())


def _bucket(category: str) -> str:
    return category if category in VQA_CATEGORIES else "other"


def exact_match_counts(preds: Sequence[str], answers: Sequence[str], categories: Sequence[str]) -> dict[str, list[int]]:
    """[num_correct, num_total] per category of `VQA_CATEGORIES` (fixed keys; unknown categories -> "other")."""
    if not len(preds) == len(answers) == len(categories):
        raise ValueError(
            f"need as many preds, answers and categories, got {len(preds)}, {len(answers)}, {len(categories)}"
        )
    counts = {c: [0, 0] for c in VQA_CATEGORIES}
    for pred, answer, category in zip(preds, answers, categories, strict=True):
        entry = counts[_bucket(category)]
        entry[0] += int(normalize_answer(pred) == normalize_answer(answer))
        entry[1] += 1
    return counts


def accuracies_from_counts(counts: dict[str, Sequence[int]]) -> dict[str, float]:
    """Accuracy of every category with questions plus `overall` over all questions (absent when there are none)."""
    scores = {c: correct / total for c, (correct, total) in counts.items() if total > 0}
    total = sum(t for _, t in counts.values())
    if total:
        scores["overall"] = sum(c for c, _ in counts.values()) / total
    return scores


def exact_match_by_category(
    preds: Sequence[str], answers: Sequence[str], categories: Sequence[str]
) -> dict[str, float]:
    """Normalised exact-match accuracy per category and `overall` (over all questions)."""
    return accuracies_from_counts(exact_match_counts(preds, answers, categories))


@dataclass
class VQAConfig:
    """VQA callback settings; defaults are the tiny preset."""

    every_n_val: int = 1  # score on the 1st and then every n-th validation run
    max_examples: int = 128  # understanding examples over all ranks (full size: a few thousand)
    max_new_tokens: int = 8  # answers are one word
    batch_size: int = 32  # questions per `answer` call

    def __post_init__(self) -> None:
        for name in ("every_n_val", "max_examples", "max_new_tokens", "batch_size"):
            check_positive(f"callbacks.vqa.{name}", getattr(self, name))


class VQACallback(PeriodicValidationCallback):
    """Logs `val/vqa_<category>` and `val/vqa_overall` at the end of an active validation run."""

    def __init__(self, cfg: VQAConfig) -> None:
        super().__init__(cfg.every_n_val)
        self.cfg = cfg
        self._reset()

    def _reset(self) -> None:
        self.images: list[torch.Tensor] = []
        self.questions: list[str] = []
        self.answers: list[str] = []
        self.categories: list[str] = []
        self.placeholder: torch.Tensor | None = None  # an image for padding calls on a rank without examples

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.active:
            return
        if self.placeholder is None and len(batch.images):
            self.placeholder = batch.images[:1].detach().cpu()
        for row, task in enumerate(batch.task.tolist()):
            if len(self.questions) >= per_rank_quota(trainer, self.cfg.max_examples):
                return
            meta = batch.meta[row]
            category = str(meta.get("category", "other"))
            if task != UNDERSTANDING_TASK or category in EXCLUDED_CATEGORIES or not {"question", "answer"} <= set(meta):
                continue
            self.images.append(batch.images[row].detach().cpu())
            self.questions.append(str(meta["question"]))
            self.answers.append(str(meta["answer"]))
            self.categories.append(category)

    def _answer_all(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
        size, device = self.cfg.batch_size, pl_module.device
        chunks = [slice(i, i + size) for i in range(0, len(self.questions), size)]
        most = int(trainer.strategy.reduce(torch.tensor(float(len(chunks)), device=device), reduce_op="max").item())
        preds: list[str] = []
        with torch.no_grad():
            for sl in chunks:
                images = torch.stack(self.images[sl]).to(device)
                preds += pl_module.answer(images, self.questions[sl], max_new_tokens=self.cfg.max_new_tokens)
            pad = self.images[0][None] if self.images else self.placeholder
            for _ in range(most - len(chunks) if pad is not None else 0):  # equal forward passes across ranks
                pl_module.answer(pad.to(device), ["?"], max_new_tokens=self.cfg.max_new_tokens)
        if len(preds) != len(self.questions):
            raise ValueError(f"pl_module.answer returned {len(preds)} answers for {len(self.questions)} questions")
        return preds

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        self.active = False
        preds = self._answer_all(trainer, pl_module)
        counts = exact_match_counts(preds, self.answers, self.categories)
        local = torch.tensor([counts[c] for c in VQA_CATEGORIES], dtype=torch.float64, device=pl_module.device)
        total = trainer.strategy.reduce(local, reduce_op="sum").round().long().tolist()
        scores = accuracies_from_counts(dict(zip(VQA_CATEGORIES, total, strict=True)))
        if "overall" not in scores:
            warnings.warn("val/vqa: skipped, no understanding questions in the validation data", stacklevel=2)
        for key, value in scores.items():
            pl_module.log(f"val/vqa_{key}", value, sync_dist=False)
        self._reset()
