"""Fréchet distance between generated and real validation images (FID) as a validation callback.

Real images and their captions come from the generation-task examples of the validation batches; the stage
generates one image per caption with a fixed seed, and the metric of `cheers_pl.eval.fid` compares the two feature
distributions (`semantic`: the model's own encoder, `pl_module.semantic_features`; `inception`: a local InceptionV3).
Beside it, `val/fid_<feature>_floor` is the same FID between the real images and as many further real images of the
validation data: the value a perfect generator would get at this sample count, which gives the number its scale.

Under DDP every rank contributes ceil(num_images / world_size) examples; torchmetrics sums the feature statistics
across ranks in `compute`, so every rank logs the same value.

References:
    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", 2017.
    Cheers (arXiv 2603.12793) — DESIGN.md §5 (distribution metrics as callbacks).

Legend: B batch, H/W image size, D feature width.
"""

import warnings
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from cheers_pl.callbacks.common import (
    PeriodicValidationCallback,
    check_positive,
    generate,
    generation_examples,
    global_count,
    per_rank_quota,
    rank_seed,
)
from cheers_pl.data.processing import to_unit
from cheers_pl.eval.fid import FEATURES, fid_metric


@dataclass
class FIDConfig:
    """FID callback settings; defaults are the tiny preset."""

    every_n_val: int = 1  # compute on the 1st and then every n-th validation run
    num_images: int = 64  # real/generated pairs over all ranks (full size: 5000–30000)
    feature: str = "semantic"  # "semantic" (the model's encoder) | "inception" (torch-fidelity InceptionV3)
    inception_weights: str | None = None  # local torch-fidelity InceptionV3 .pth; required for feature=inception
    seed: int = 0  # generation seed of the first chunk (chunk i uses seed + i)
    num_steps: int | None = None  # sampling steps; None = the stage's setting (paper: 80)
    guidance_scale: float | None = None  # CFG scale; None = the stage's setting (paper: 9.5)
    batch_size: int = 16  # prompts per `generate_images` call

    def __post_init__(self) -> None:
        check_positive("callbacks.fid.every_n_val", self.every_n_val)
        check_positive("callbacks.fid.batch_size", self.batch_size)
        if not isinstance(self.num_images, int) or self.num_images < 2:
            raise ValueError(f"callbacks.fid.num_images must be an integer >= 2, got {self.num_images!r}")
        if self.feature not in FEATURES:
            raise ValueError(f"callbacks.fid.feature must be one of {FEATURES}, got {self.feature!r}")


class FIDCallback(PeriodicValidationCallback):
    """Logs `val/fid_<feature>` at the end of an active validation run (see the module docstring)."""

    def __init__(self, cfg: FIDConfig) -> None:
        super().__init__(cfg.every_n_val)
        self.cfg = cfg
        self.metric: FrechetInceptionDistance | None = None
        if cfg.feature == "inception":  # fail at construction when the weights file is missing
            self.metric = fid_metric(cfg.feature, cfg.inception_weights, None, None)
        self.floor: FrechetInceptionDistance | None = None  # real vs other real images: FID's own floor
        if cfg.feature == "inception":
            self.floor = fid_metric(cfg.feature, cfg.inception_weights, None, None)
        self.captions: list[str] = []
        self.num_reference = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(feature=self.cfg.feature)

    @property
    def metric_name(self) -> str:
        return f"val/fid_{self.cfg.feature}"

    def _metric_input(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        # Inception takes [0, 1] floats (torchmetrics quantises to uint8); the semantic encoder takes [-1, 1].
        return to_unit(images_B3HW) if self.cfg.feature == "inception" else images_B3HW

    def _ensure_metric(self, pl_module: Any, images_B3HW: torch.Tensor) -> FrechetInceptionDistance:
        if self.metric is None:
            self.metric = fid_metric(self.cfg.feature, None, pl_module.semantic_features, images_B3HW)
            self.floor = fid_metric(self.cfg.feature, None, pl_module.semantic_features, images_B3HW)
        self.floor = self.floor.to(images_B3HW.device)
        return self.metric.to(images_B3HW.device)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self.captions, self.num_reference = [], 0
        for metric in (self.metric, self.floor):
            if metric is not None:
                metric.reset()

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
        # Built on every rank from the first batch (whatever its tasks) so that all ranks hold states to sync.
        metric = self._ensure_metric(pl_module, batch.images)
        quota = per_rank_quota(trainer, self.cfg.num_images)
        images, captions = generation_examples(batch)
        take = max(0, min(quota - len(self.captions), len(captions)))
        if take:
            real = self._metric_input(images[:take])
            metric.update(real, real=True)
            self.floor.update(real, real=True)
            self.captions += captions[:take]
        extra = max(0, min(quota - self.num_reference, len(captions) - take))
        if extra:  # further real images, the floor's second sample
            self.floor.update(self._metric_input(images[take : take + extra]), real=False)
            self.num_reference += extra

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        self.active = False
        # Every rank takes the same branch: the decision uses the total over ranks.
        total = global_count(trainer, pl_module, len(self.captions))
        if total < 2 or self.metric is None:
            warnings.warn(
                f"{self.metric_name}: skipped, only {total} generation-task examples in the validation data (need 2)",
                stacklevel=2,
            )
            return
        metric = self.metric.to(pl_module.device)
        if self.captions:
            images, _, _ = generate(
                pl_module,
                self.captions,
                seed=rank_seed(trainer, self.cfg.seed),
                batch_size=self.cfg.batch_size,
                num_steps=self.cfg.num_steps,
                guidance_scale=self.cfg.guidance_scale,
            )
            metric.update(self._metric_input(images.to(pl_module.device)), real=False)
        value = metric.compute()
        pl_module.log(self.metric_name, value.float(), sync_dist=False)
        if global_count(trainer, pl_module, self.num_reference) == total:
            pl_module.log(f"{self.metric_name}_floor", self.floor.compute().float(), sync_dist=False)
        else:
            warnings.warn(f"{self.metric_name}_floor: skipped, fewer than {total} further real images", stacklevel=2)
        metric.reset()
        self.floor.reset()
        self.captions = []
