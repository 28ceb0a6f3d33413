"""Image→caption retrieval top-1 of the contrastive towers on validation (DESIGN.md §5, tokenizer stage).

The first `num_candidates` validation examples with an image (per rank) are embedded with the stage's public
`contrastive_embed(images, captions)`; `val/retrieval_top1` is the fraction of images whose most similar caption
among those candidates is their own (chance = 1 / num_candidates).
"""

import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from cheers_pl.data.tasks import TASK_TEXT
from cheers_pl.eval.retrieval import retrieval_top1


@dataclass
class RetrievalConfig:
    """Settings of `RetrievalCallback`."""

    num_candidates: int = 32  # K: images and captions compared against each other

    def __post_init__(self) -> None:
        if self.num_candidates < 2:
            raise ValueError(f"callbacks.retrieval.num_candidates must be >= 2, got {self.num_candidates}")


class RetrievalCallback(L.Callback):
    """Collects K validation (image, caption) pairs and logs image→caption top-1 among them."""

    def __init__(self, cfg: RetrievalConfig) -> None:
        self.cfg = cfg
        self.images: list[torch.Tensor] = []
        self.captions: list[str] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self.captions = [], []

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        room = self.cfg.num_candidates - len(self.captions)
        keep = [i for i, task in enumerate(batch.task.tolist()) if task != TASK_TEXT and "caption" in batch.meta[i]]
        keep = keep[:room]
        if keep:
            self.images.append(batch.images[keep])
            self.captions += [str(batch.meta[i]["caption"]) for i in keep]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or len(self.captions) < 2:
            return
        if len(self.captions) < self.cfg.num_candidates:
            warnings.warn(
                f"retrieval: only {len(self.captions)} validation pairs < num_candidates={self.cfg.num_candidates}",
                stacklevel=2,
            )
        img_emb, txt_emb = pl_module.contrastive_embed(torch.cat(self.images), self.captions)
        top1 = retrieval_top1(img_emb, txt_emb)
        pl_module.log("val/retrieval_top1", torch.tensor(top1, device=img_emb.device), sync_dist=True)
        self.images, self.captions = [], []
