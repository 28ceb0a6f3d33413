"""CLIP score of generated images against their prompts as a validation callback.

Prompts are the captions of the validation batches' generation-task examples; the stage generates one image per
prompt with a fixed seed. The metric is `cheers_pl.eval.clip_score`: with `model` set, a local CLIP directory
(torchmetrics `CLIPScore`); with `model` None, the contrastive towers of the `tokenizer` stage
(`pl_module.contrastive_embed`). Beside `val/clip_score` (clamped at 0, torchmetrics' definition) it logs the
unclamped means of matched and mismatched pairs and their gap (`val/clip_score_gap`), which separates a model that
follows its prompts from one that does not even where the clamped score reads 0.

Under DDP every rank scores ceil(num_images / world_size) prompts; torchmetrics sums the states across ranks.

References:
    Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", 2021.
    Cheers (arXiv 2603.12793) — DESIGN.md §5 (distribution metrics as callbacks).

Legend: B batch, H/W image size, D embedding width.
"""

import warnings
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics import Metric
from torchmetrics.multimodal.clip_score import CLIPScore

from cheers_pl.callbacks.common import (
    PeriodicValidationCallback,
    check_positive,
    generate,
    generation_rows,
    global_count,
    per_rank_quota,
    rank_seed,
)
from cheers_pl.data.processing import to_uint8
from cheers_pl.eval.clip_score import ContrastiveCLIPScore, EmbedFn, local_clip_score, matched_and_mismatched


@dataclass
class CLIPScoreConfig:
    """CLIP-score callback settings; defaults are the tiny preset."""

    every_n_val: int = 1  # compute on the 1st and then every n-th validation run
    num_images: int = 32  # prompts over all ranks (full size: e.g. 1000–5000)
    model: str | None = None  # local CLIP directory; None = the model's own contrastive towers
    seed: int = 0  # generation seed of the first chunk (chunk i uses seed + i)
    num_steps: int | None = None  # sampling steps; None = the stage's setting (paper: 80)
    guidance_scale: float | None = None  # CFG scale; None = the stage's setting (paper: 9.5)
    batch_size: int = 16  # prompts per `generate_images` call

    def __post_init__(self) -> None:
        for name in ("every_n_val", "num_images", "batch_size"):
            check_positive(f"callbacks.clip_score.{name}", getattr(self, name))


class CLIPScoreCallback(PeriodicValidationCallback):
    """Logs `val/clip_score` at the end of an active validation run (see the module docstring)."""

    metric_name = "val/clip_score"

    def __init__(self, cfg: CLIPScoreConfig) -> None:
        super().__init__(cfg.every_n_val)
        self.cfg = cfg
        self.metric: Metric | None = local_clip_score(cfg.model) if cfg.model is not None else None
        self.captions: list[str] = []

    def _contrastive_embed(self, pl_module: Any) -> EmbedFn:
        def embed(images: torch.Tensor | None, texts: list[str] | None) -> tuple[Any, Any]:
            try:
                return pl_module.contrastive_embed(images, texts)
            except ValueError as err:
                raise ValueError(
                    f"{self.metric_name}: the model has no contrastive text tower ({err}); set "
                    "callbacks.clip_score.model to a local CLIP directory or drop the clip_score callback"
                ) from err

        return embed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.metric is None:
            self.metric = ContrastiveCLIPScore(self._contrastive_embed(pl_module))

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self.captions = []

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
        remaining = per_rank_quota(trainer, self.cfg.num_images) - len(self.captions)
        rows = generation_rows(batch)[: max(remaining, 0)]
        self.captions += [str(batch.meta[i]["caption"]) for i in rows]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        self.active = False
        total = global_count(trainer, pl_module, len(self.captions))
        if total == 0 or self.metric is None:
            warnings.warn(
                f"{self.metric_name}: skipped, no generation-task examples in the validation data", stacklevel=2
            )
            return
        metric = self.metric.to(pl_module.device)
        images = torch.empty(0, device=pl_module.device)
        if self.captions:
            images, _, _ = generate(
                pl_module,
                self.captions,
                seed=rank_seed(trainer, self.cfg.seed),
                batch_size=self.cfg.batch_size,
                num_steps=self.cfg.num_steps,
                guidance_scale=self.cfg.guidance_scale,
            )
            images = images.to(pl_module.device)
            # torchmetrics CLIPScore feeds the CLIP processor, which expects [0, 255] pixels.
            images = to_uint8(images) if isinstance(metric, CLIPScore) else images
        scores = matched_and_mismatched(
            metric, images, self.captions, lambda x: trainer.strategy.reduce(x, reduce_op="sum")
        )
        pl_module.log(self.metric_name, scores["clip_score"], sync_dist=False)
        for key in ("matched_raw", "mismatched_raw", "gap"):
            pl_module.log(f"{self.metric_name}_{key}", scores[key], sync_dist=False)
        self.captions = []
