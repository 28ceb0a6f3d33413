"""Test doubles for the generation callbacks: a duck-typed stage and validation batches (not a test module)."""

from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from cheers_pl.data.batch import Batch


@dataclass
class FakeGeneration:
    images: torch.Tensor
    gates: torch.Tensor | None
    grid_hw: tuple[int, int]


class FakeStage(pl.LightningModule):
    """Generates `lookup[prompt] + shift`; features are a fixed random projection of the pixels."""

    def __init__(self, lookup: dict[str, torch.Tensor], shift: float = 0.0, num_features: int = 8) -> None:
        super().__init__()
        self.lookup = lookup
        self.shift = shift
        image = next(iter(lookup.values()))
        gen = torch.Generator().manual_seed(1)
        self.register_buffer("proj", torch.randn(image.numel(), num_features, generator=gen) / image.numel() ** 0.5)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[dict] = []
        self.grid_hw = (2, 3)
        self.num_steps = 4
        self.has_text_tower = True

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        return None

    def semantic_features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float() @ self.proj

    def contrastive_embed(
        self, images: torch.Tensor | None, texts: list[str] | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Image tower = the features; text tower = the features of the prompt's real image."""
        if texts is not None and not self.has_text_tower:
            raise ValueError("this model has no text tower")
        img = None if images is None else self.semantic_features(images)
        txt = None if texts is None else self.semantic_features(torch.stack([self.lookup[t] for t in texts]))
        return img, txt

    def generate_images(
        self,
        prompts: list[str],
        seed: int = 0,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        alpha: float | None = None,
        sampler: str | None = None,
        record_gates: bool = False,
    ) -> FakeGeneration:
        self.calls.append(
            {
                "prompts": list(prompts),
                "seed": seed,
                "num_steps": num_steps,
                "guidance_scale": guidance_scale,
                "record_gates": record_gates,
            }
        )
        images = torch.stack([self.lookup[p] for p in prompts]).to(self.device) + self.shift
        gates = None
        if record_gates:
            steps = num_steps or self.num_steps
            m = self.grid_hw[0] * self.grid_hw[1]
            gates = torch.arange(steps * len(prompts) * m, dtype=torch.float).reshape(steps, len(prompts), m)
        return FakeGeneration(
            images=images.clamp(-1, 1) if self.shift == 0 else images, gates=gates, grid_hw=self.grid_hw
        )


def make_batch(images: torch.Tensor, tasks: list[int], captions: list[str | None]) -> Batch:
    size = images.shape[0]
    meta = [{"caption": c} if c is not None else {"question": "q?"} for c in captions]
    return Batch(
        images=images,
        task=torch.tensor(tasks, dtype=torch.long),
        input_ids=torch.zeros(size, 2, dtype=torch.long),
        labels=torch.zeros(size, 2, dtype=torch.long),
        pad_mask=torch.ones(size, 2, dtype=torch.bool),
        block_ids=torch.zeros(size, 2, dtype=torch.long),
        prompt_mask=torch.zeros(size, 2, dtype=torch.bool),
        keys=[f"k{i}" for i in range(size)],
        meta=meta,
        events={},
    )


def make_data(
    num_batches: int = 6, batch_size: int = 8, image_size: int = 8
) -> tuple[DataLoader, dict[str, torch.Tensor]]:
    """Validation batches mixing understanding (task 0, odd rows) and generation (task 1, even rows) examples."""
    gen = torch.Generator().manual_seed(0)
    batches, lookup = [], {}
    for b in range(num_batches):
        images = torch.rand(batch_size, 3, image_size, image_size, generator=gen) * 2 - 1
        tasks = [1 if i % 2 == 0 else 0 for i in range(batch_size)]
        captions = [f"prompt {b}-{i}" if t == 1 else None for i, t in enumerate(tasks)]
        for img, cap in zip(images, captions, strict=True):
            if cap is not None:
                lookup[cap] = img
        batches.append(make_batch(images, tasks, captions))
    return DataLoader(batches, batch_size=None, collate_fn=lambda x: x), lookup


def make_trainer(tmp_path, callbacks: list[pl.Callback], logger: object = False) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
