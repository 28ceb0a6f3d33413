"""CLIP score of generated images against their prompts as a validation callback.

Prompts are the captions of the validation batches' generation-task examples; the stage generates one image per
prompt with a fixed seed. Two scorers, one formula — torchmetrics' CLIPScore:
`score = max(100 · mean_i cos(img_emb_i, txt_emb_i), 0)` (the mean over images is clamped, not each cosine):
- `model` set: a local CLIP directory (`transformers` `CLIPModel` + `CLIPProcessor` saved with
  `save_pretrained`) scored by torchmetrics `CLIPScore`; nothing is downloaded.
- `model` None: the contrastive image/text towers trained in the `tokenizer` stage
  (`pl_module.contrastive_embed`); only comparable within one model.

Under DDP every rank scores ceil(num_images / world_size) prompts; torchmetrics sums the states across ranks.

References:
    Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", 2021.
    Cheers (arXiv 2603.12793) — DESIGN.md §5 (distribution metrics as callbacks).

Legend: B batch, H/W image size, D embedding width.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
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
    to_uint8,
)

EmbedFn = Callable[[torch.Tensor | None, list[str] | None], tuple[torch.Tensor | None, torch.Tensor | None]]


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


class ContrastiveCLIPScore(Metric):
    """torchmetrics CLIPScore's formula over embeddings from a function `(images, texts) -> (img_emb, txt_emb)`.

    The function is a plain attribute, so the stage is not a sub-module of the metric.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, embed: EmbedFn, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed = embed
        self.add_state("score", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images_B3HW: torch.Tensor, texts: list[str]) -> None:
        """Adds 100·cos(img_emb, txt_emb) of each image/prompt pair (images in [-1, 1])."""
        if images_B3HW.shape[0] != len(texts):
            raise ValueError(f"got {images_B3HW.shape[0]} images for {len(texts)} prompts")
        img_BD, txt_BD = self.embed(images_B3HW, texts)
        cos_B = F.cosine_similarity(img_BD.double(), txt_BD.double().to(img_BD.device), dim=-1)
        self.score += 100 * cos_B.sum()
        self.n_samples += len(texts)

    def compute(self) -> torch.Tensor:
        """max(mean score, 0), as torchmetrics CLIPScore."""
        return torch.clamp(self.score / self.n_samples, min=0.0).float()


class CLIPFeatures(nn.Module):
    """Adapts a `transformers.CLIPModel` to the tensor-returning `get_*_features` torchmetrics expects.

    transformers 5 returns a `BaseModelOutputWithPooling` whose `pooler_output` holds the projected embedding;
    transformers 4 returned the tensor itself. Both are accepted.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings B×D."""
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text embeddings B×D."""
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def local_clip_score(path: str) -> CLIPScore:
    """torchmetrics CLIPScore over a local CLIP directory; a ValueError names the key when it is missing."""
    if not Path(path).is_dir():
        raise ValueError(f"callbacks.clip_score.model: local CLIP directory {path!r} not found (nothing is downloaded)")
    from transformers import CLIPModel, CLIPProcessor

    def load() -> tuple[CLIPFeatures, Any]:
        return CLIPFeatures(CLIPModel.from_pretrained(path).eval()), CLIPProcessor.from_pretrained(path)

    return CLIPScore(model_name_or_path=load)


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
        metric.reset()
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
            metric.update(to_uint8(images) if isinstance(metric, CLIPScore) else images, self.captions)
        pl_module.log(self.metric_name, metric.compute().float(), sync_dist=False)
        metric.reset()
        self.captions = []
