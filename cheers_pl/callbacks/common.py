"""Shared plumbing of the generation callbacks: the every-n-validations schedule, collecting validation prompts,
chunked seeded generation through the stage's public API, and writing images to TensorBoard / PNG.

The stage is duck-typed (STYLE.md R10): callbacks only call `generate_images`, `semantic_features` and
`contrastive_embed`, and read the public `GenerationOutput` fields `images`, `gates` and `grid_hw`.

Legend: B batch, H/W image size, S sampling steps, M semantic-grid tokens.
"""

import textwrap
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from cheers_pl.data.tasks import TASK_GENERATION


def check_positive(name: str, value: int) -> None:
    """Raises a ValueError naming the config field when `value` is not a positive integer."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class PeriodicValidationCallback(pl.Callback):
    """Base class: active on the 1st, (1+n)-th, (1+2n)-th ... validation run, never during the sanity check.

    The count of validation runs is saved in the callback state so that a resumed run keeps its schedule.
    """

    def __init__(self, every_n_val: int) -> None:
        check_positive("every_n_val", every_n_val)
        self.every_n_val = every_n_val
        self.num_val_runs = 0
        self.active = False

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.active = not trainer.sanity_checking and self.num_val_runs % self.every_n_val == 0
        if not trainer.sanity_checking:
            self.num_val_runs += 1

    def state_dict(self) -> dict[str, Any]:
        return {"num_val_runs": self.num_val_runs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_val_runs = int(state_dict.get("num_val_runs", 0))


def per_rank_quota(trainer: pl.Trainer, num_total: int) -> int:
    """How many examples this rank contributes so that all ranks together reach `num_total`."""
    return -(-num_total // max(trainer.world_size, 1))


def global_count(trainer: pl.Trainer, pl_module: pl.LightningModule, count: int) -> int:
    """Sum of `count` over ranks (a collective: call on every rank), so that all ranks take the same branch."""
    total = trainer.strategy.reduce(torch.tensor(float(count), device=pl_module.device), reduce_op="sum")
    return int(total.item())


def generation_rows(batch: Any) -> list[int]:
    """Row indices of a batch's generation-task examples that carry a caption (their prompt)."""
    return [i for i, task in enumerate(batch.task.tolist()) if task == TASK_GENERATION and "caption" in batch.meta[i]]


def generation_examples(batch: Any) -> tuple[torch.Tensor, list[str]]:
    """The real images (k×3×H×W in [-1, 1]) and captions of a batch's generation-task examples."""
    rows = generation_rows(batch)
    return batch.images[rows], [str(batch.meta[i]["caption"]) for i in rows]


def rank_seed(trainer: pl.Trainer, seed: int) -> int:
    """The base generation seed of this rank: ranks draw disjoint seed ranges for their prompt shares."""
    return seed + 100_003 * trainer.global_rank


def generate(
    pl_module: Any,
    prompts: list[str],
    seed: int,
    batch_size: int,
    record_gates: bool = False,
    **sampling: Any,
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int] | None]:
    """Generates `prompts` in chunks of `batch_size` with the stage's `generate_images`.

    Chunk i uses seed `seed + i`: the same prompts, seed and `batch_size` give the same images, so the protocol
    (seed, batch size, sampling settings) of a reported number is fully given by the callback config.

    Returns:
        images B×3×H×W in [-1, 1]; gates S×B×M (or None unless `record_gates`); the semantic grid (h, w) or None.
    """
    images, gates, grid_hw = [], [], None
    for i, start in enumerate(range(0, len(prompts), batch_size)):
        out = pl_module.generate_images(
            prompts[start : start + batch_size], seed=seed + i, record_gates=record_gates, **sampling
        )
        images.append(out.images)
        grid_hw = getattr(out, "grid_hw", grid_hw)
        if record_gates and out.gates is not None:
            gates.append(out.gates)
    gates_SBM = torch.cat(gates, dim=1) if gates and len(gates) == len(images) else None
    return torch.cat(images), gates_SBM, grid_hw


def output_dir(trainer: pl.Trainer, name: str) -> Path:
    """`<trainer.log_dir or default_root_dir>/<name>`, created. Call on every rank (`log_dir` broadcasts)."""
    root = trainer.log_dir or trainer.default_root_dir
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def logged_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs the scalars of this moment at (validation inside fit: the optimizer steps taken before
    the current batch, which is `global_step` − 1 there), so images and scalars of one validation line up."""
    if trainer.state.fn == "fit":
        return trainer.fit_loop.epoch_loop._batches_that_stepped
    return trainer.global_step


def log_image(trainer: pl.Trainer, tag: str, image: torch.Tensor | np.ndarray) -> int:
    """Adds `image` (3×H×W float in [0, 1], or H×W×3/4 uint8) to every TensorBoard logger; returns how many."""
    count = 0
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            fmt = "CHW" if isinstance(image, torch.Tensor) else "HWC"
            logger.experiment.add_image(tag, image, global_step=logged_step(trainer), dataformats=fmt)
            count += 1
    return count


def captioned_grid(
    images_NHW3: np.ndarray,
    num_columns: int,
    captions: list[str] | None = None,
    column_titles: list[str] | None = None,
    tile_inches: float = 1.7,
) -> np.ndarray:
    """Images enlarged (nearest neighbour) on a grid with a caption under each or a title over each column.

    Returns:
        The rasterised figure, H×W×3 uint8 (64-pixel tiles are drawn ~2.7× larger, readable in TensorBoard).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images_NHW3)
    cols = max(1, min(num_columns, n))
    rows = -(-n // cols)
    text_h = 0.45 if captions else 0.0
    fig = Figure(figsize=(tile_inches * cols, (tile_inches + text_h) * rows + (0.3 if column_titles else 0)), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images_NHW3[i], interpolation="nearest")
        if captions:
            ax.set_title(textwrap.fill(captions[i], 28), fontsize=6, y=-0.02, va="top")
        if column_titles and i < cols:
            ax.set_title(column_titles[i], fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97 if column_titles else 0.99, bottom=0.01, wspace=0.05,
                        hspace=0.55 if captions else 0.05)  # fmt: skip
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
