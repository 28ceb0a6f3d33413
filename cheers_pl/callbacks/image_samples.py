"""Sample grids of fixed prompts and the HFI gate heat-map as a validation callback.

At the end of an active validation run the stage generates a fixed prompt list with a fixed seed, so successive
grids show the same noise evolving with training. The grid goes to TensorBoard (when a TensorBoardLogger is
attached) and to `<log_dir>/samples/step_<global step>.png`. With `gate_heatmap`, the gated high-frequency
injection's per-token gate g (one unbounded scalar per semantic token per sampling step, zero at init) is drawn
as one panel per prompt — rows are sampling steps from noise (top) to data (bottom), columns are tokens of the
semantic grid in row-major order — and saved as `gates_step_<global step>.png`; `val/gate_mean` and
`val/gate_abs_mean` are logged, so one can watch HFI switch on. With a real flow head it also logs
`val/hfi_injection_ratio` = mean per-token ‖g·S‖ / ‖Z'‖ entering the HFI LayerNorm over the same sampling calls:
after the LayerNorm only this balance counts, and a ratio ≫ 1 means the detail residual S drowns what stage 1
carries (issue 12 measured 6–8 on the tiny preset, where the gate grows without bound).

Every rank generates (under FSDP the forward pass is collective); global rank 0 writes files and images.

References:
    Cheers (arXiv 2603.12793), §3 (gated high-frequency injection) — DESIGN.md §1.3.

Legend: B prompts, H/W image size, S sampling steps, M = h·w semantic-grid tokens.
"""

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image

from cheers_pl.callbacks.common import (
    PeriodicValidationCallback,
    captioned_grid,
    check_positive,
    generate,
    log_image,
    output_dir,
)
from cheers_pl.data.processing import to_uint8, to_unit
from cheers_pl.model.flow_head import hfi_balance

DEFAULT_PROMPTS = [  # one per GenEval-style category of the synthetic world (DESIGN.md §5), plus texture and digit
    "a large red solid circle",
    "a small blue striped square",
    "two green triangles",
    "three yellow diamonds",
    "a purple circle to the left of an orange square",
    "a cyan triangle above a red diamond",
    "a large green checkered square with the digit 7",
    "a small orange dotted circle at the bottom right",
]


@dataclass
class ImageSamplesConfig:
    """Sample-grid callback settings; defaults are the tiny preset."""

    every_n_val: int = 1  # draw on the 1st and then every n-th validation run
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    seed: int = 0  # generation seed (chunk i of `batch_size` prompts uses seed + i)
    num_steps: int | None = None  # sampling steps; None = the stage's setting (paper: 80)
    guidance_scale: float | None = None  # CFG scale; None = the stage's setting (paper: 9.5)
    gate_heatmap: bool = True  # record and draw the HFI gate per token and step
    num_columns: int = 4  # images per grid row
    batch_size: int = 16  # prompts per `generate_images` call

    def __post_init__(self) -> None:
        for name in ("every_n_val", "num_columns", "batch_size"):
            check_positive(f"callbacks.image_samples.{name}", getattr(self, name))
        if not self.prompts or not all(isinstance(p, str) and p for p in self.prompts):
            raise ValueError(f"callbacks.image_samples.prompts must be non-empty strings, got {self.prompts!r}")


def render_gate_heatmap(
    gates_SBM: torch.Tensor, grid_hw: tuple[int, int] | None = None, titles: list[str] | None = None
) -> Figure:
    """One heat-map panel per prompt (rows = steps, noise at the top; columns = tokens), shared symmetric scale.

    Returns:
        A matplotlib Figure on the Agg canvas (no pyplot state); `figure_to_array` turns it into H×W×3 uint8.
    """
    if gates_SBM.dim() != 3:
        raise ValueError(f"gates must be S×B×M (steps, prompts, tokens), got shape {tuple(gates_SBM.shape)}")
    num_steps, num_prompts, num_tokens = gates_SBM.shape
    if grid_hw is not None and grid_hw[0] * grid_hw[1] != num_tokens:
        raise ValueError(f"grid_hw {grid_hw} does not match the {num_tokens} gate tokens")
    values = gates_SBM.detach().float().cpu().numpy()
    # Diverging map centred at 0 = HFI off (the zero-initialised gate), so the sign of g reads at a glance.
    limit = float(np.abs(values).max())
    limit = limit if limit > 1e-12 else 1.0
    cols = min(num_prompts, 4)
    rows = -(-num_prompts // cols)
    fig = Figure(figsize=(3.2 * cols + 1.0, 2.6 * rows), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    image = None
    for b, ax in enumerate(axes):
        if b >= num_prompts:
            ax.set_axis_off()
            continue
        image = ax.imshow(
            values[:, b, :], aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
        )
        title = titles[b] if titles is not None and b < len(titles) else f"prompt {b}"
        ax.set_title(title if len(title) <= 36 else title[:33] + "...", fontsize=7)
        grid = f" ({grid_hw[0]}×{grid_hw[1]} row-major)" if grid_hw is not None else ""
        ax.set_xlabel(f"token{grid}", fontsize=7)
        ax.set_ylabel(f"step (0..{num_steps - 1}, noise→data)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=list(axes[:num_prompts]), label="gate g", shrink=0.9)
    return fig


def injection_ratio(records: list[dict[str, torch.Tensor]]) -> float | None:
    """Mean ‖g·S‖ / mean ‖Z'‖ over `hfi_balance` records (None when there are none)."""
    if not records:
        return None
    z_norm = float(torch.stack([r["z_norm"] for r in records]).mean())
    return float(torch.stack([r["gs_norm"] for r in records]).mean()) / max(z_norm, 1e-12)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Rasterises an Agg figure to H×W×3 uint8."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class ImageSamplesCallback(PeriodicValidationCallback):
    """Draws the fixed-prompt sample grid (and gate heat-map) at the end of an active validation run."""

    def __init__(self, cfg: ImageSamplesConfig) -> None:
        super().__init__(cfg.every_n_val)
        self.cfg = cfg
        self.last_paths: list[Path] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        self.active = False
        cfg = self.cfg
        with hfi_balance(getattr(getattr(pl_module, "model", None), "flow_head", None)) as balance:
            images, gates_SBM, grid_hw = generate(
                pl_module,
                list(cfg.prompts),
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                record_gates=cfg.gate_heatmap,
                num_steps=cfg.num_steps,
                guidance_scale=cfg.guidance_scale,
            )
        if gates_SBM is not None:
            pl_module.log("val/gate_mean", gates_SBM.float().mean(), sync_dist=False)
            pl_module.log("val/gate_abs_mean", gates_SBM.float().abs().mean(), sync_dist=False)
        ratio = injection_ratio(balance)
        if ratio is not None:
            pl_module.log("val/hfi_injection_ratio", ratio, sync_dist=False)
        folder = output_dir(trainer, "samples")  # on every rank: `trainer.log_dir` is a collective
        if trainer.is_global_zero:
            self.last_paths = self._write(trainer, folder, images, gates_SBM, grid_hw)

    def _write(
        self,
        trainer: pl.Trainer,
        folder: Path,
        images: torch.Tensor,
        gates_SBM: torch.Tensor | None,
        grid_hw: tuple[int, int] | None,
    ) -> list[Path]:
        step = trainer.global_step
        grid = make_grid(to_unit(images).cpu(), nrow=min(self.cfg.num_columns, images.shape[0]), padding=2)
        paths = [folder / f"step_{step}.png"]
        save_image(grid, paths[0])
        tiles = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        log_image(trainer, "val/samples", captioned_grid(tiles, self.cfg.num_columns, list(self.cfg.prompts)))
        protocol = folder / "prompts.txt"
        if not protocol.exists():
            lines = [f"seed={self.cfg.seed} num_steps={self.cfg.num_steps} guidance_scale={self.cfg.guidance_scale}"]
            protocol.write_text("\n".join(lines + list(self.cfg.prompts)) + "\n")
        if gates_SBM is not None:
            fig = render_gate_heatmap(gates_SBM, grid_hw, list(self.cfg.prompts))
            paths.append(folder / f"gates_step_{step}.png")
            fig.savefig(paths[-1])
            log_image(trainer, "val/gate_heatmap", figure_to_array(fig))
        elif self.cfg.gate_heatmap:
            warnings.warn("callbacks.image_samples.gate_heatmap is set but the stage returned no gates", stacklevel=2)
        return paths
