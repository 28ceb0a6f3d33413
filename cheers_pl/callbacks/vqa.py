"""Understanding accuracy: exact-match VQA per question category as a validation callback.

The callback collects the understanding examples of the validation batches (task 0 with a question and an answer;
captioning rows, category "caption", are excluded), answers them with the stage's public `answer`, and logs
exact-match accuracy per category as `val/vqa_<category>` and `val/vqa_overall` (over all questions, MMBench-style),
scored by `cheers_pl.eval.vqa` (the metric the evaluate command uses too).

Under data parallelism every rank answers ceil(max_examples / world_size) examples, the counts are summed across
ranks, and ranks with fewer chunks run discarded extra `answer` calls so every rank makes the same number of
forward passes (FSDP).

References:
    Liu et al., "MMBench: Is Your Multi-modal Model an All-around Player?", 2023 (per-category exact match).
    Cheers (arXiv 2603.12793) — DESIGN.md §5.

Legend: B examples, H/W image size.
"""

import warnings
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch

from cheers_pl.callbacks.common import PeriodicValidationCallback, check_positive, per_rank_quota
from cheers_pl.data.tasks import TASK_UNDERSTANDING
from cheers_pl.eval.vqa import EXCLUDED_CATEGORIES, VQA_CATEGORIES, accuracies_from_counts, exact_match_counts


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
            if task != TASK_UNDERSTANDING or category in EXCLUDED_CATEGORIES or not {"question", "answer"} <= set(meta):
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
