"""Reconstruction quality of the vision tokenizer: PSNR/SSIM on validation and sample grids (DESIGN.md §5).

Each validation run reconstructs the validation images through the stage's public `reconstruct` (VAE round trip,
and the pixel decoder D at t = 1 and the other configured t) and logs `val/psnr_vae`, `val/psnr_decoder_t1`,
`val/ssim_vae`, `val/ssim_decoder_t1`: PSNR is the mean of per-image PSNRs on images mapped to [0, 1]
(data_range 1), SSIM the torchmetrics default (Gaussian 11×11). The first `num_images` examples go into a grid
(columns: original | VAE | D at each t) written to TensorBoard and to `<run dir>/reconstructions/step_XXXXXX.png`.
`evaluate_reconstruction` gives the same figures for any image tensor (e.g. `photo_crops()` of scikit-image photos).

Legend: B batch, H/W image side.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchvision.utils import make_grid, save_image

from cheers_pl.callbacks.common import captioned_grid, log_image
from cheers_pl.data.processing import to_uint8, to_unit
from cheers_pl.data.tasks import TASK_TEXT

METRIC_KEYS = ("vae", "decoder_t1.0")  # reconstructions that get PSNR/SSIM
LOG_NAMES = {"vae": "vae", "decoder_t1.0": "decoder_t1"}


@dataclass
class ReconstructionConfig:
    """Settings of `ReconstructionCallback`."""

    num_images: int = 8  # rows of the grid
    t_values: list[float] = field(default_factory=lambda: [1.0, 0.5])  # D columns of the grid; 1.0 is always measured
    seed: int = 0  # noise seed of D's inputs (per batch: seed + batch_idx)
    every_n_val: int = 1  # grid every n-th validation run (metrics every run)

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"callbacks.reconstruction.num_images must be >= 1, got {self.num_images}")
        if self.every_n_val < 1:
            raise ValueError(f"callbacks.reconstruction.every_n_val must be >= 1, got {self.every_n_val}")
        bad = [t for t in self.t_values if not 0.0 <= t <= 1.0]
        if bad:
            raise ValueError(f"callbacks.reconstruction.t_values must lie in [0, 1], got {bad}")


def new_metrics() -> dict[str, torch.nn.Module]:
    """Fresh PSNR (mean of per-image values) and SSIM metrics on [0, 1] images, keyed `psnr_*` / `ssim_*`."""
    out: dict[str, torch.nn.Module] = {}
    for key in METRIC_KEYS:
        name = LOG_NAMES[key]
        out[f"psnr_{name}"] = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")
        out[f"ssim_{name}"] = StructuralSimilarityIndexMeasure(data_range=1.0)
    return out


def update_metrics(metrics: dict[str, torch.nn.Module], images: torch.Tensor, recon: dict[str, torch.Tensor]) -> None:
    target = to_unit(images)
    for key in METRIC_KEYS:
        if key in recon:
            name = LOG_NAMES[key]
            metrics[f"psnr_{name}"].update(to_unit(recon[key]), target)
            metrics[f"ssim_{name}"].update(to_unit(recon[key]), target)


@torch.no_grad()
def evaluate_reconstruction(pl_module: Any, images: torch.Tensor, batch_size: int = 32, seed: int = 0) -> dict:
    """PSNR/SSIM of the VAE and of D at t = 1 on `images` (B,3,H,W in [-1, 1]) through `pl_module.reconstruct`."""
    metrics = {k: m.to(images.device) for k, m in new_metrics().items()}
    for i, start in enumerate(range(0, images.shape[0], batch_size)):
        chunk = images[start : start + batch_size]
        update_metrics(metrics, chunk, pl_module.reconstruct(chunk, t_values=(1.0,), seed=seed + i))
    return {k: float(m.compute()) for k, m in metrics.items() if m.update_called}


def photo_crops(size: int = 64) -> torch.Tensor:
    """Non-overlapping size×size crops of scikit-image's bundled colour photos, as B,3,size,size in [-1, 1]."""
    from skimage import data

    crops = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        img = torch.from_numpy(getattr(data, name)().copy()).permute(2, 0, 1).float() / 127.5 - 1
        for y in range(0, img.shape[1] - size + 1, 2 * size):
            for x in range(0, img.shape[2] - size + 1, 2 * size):
                crops.append(img[:3, y : y + size, x : x + size])
    return torch.stack(crops)


def _title(key: str) -> str:
    """Column title of a reconstruction key: "vae" → "VAE", "decoder_t0.5" → "D(z_t), t = 0.5"."""
    return "VAE" if key == "vae" else f"D(z_t), t = {key.removeprefix('decoder_t')}"


class ReconstructionCallback(L.Callback):
    """Logs reconstruction PSNR/SSIM on validation and writes original | VAE | D(z_t) grids."""

    def __init__(self, cfg: ReconstructionConfig) -> None:
        self.cfg = cfg
        self.metrics = new_metrics()
        self.rows: list[torch.Tensor] = []
        self.column_titles: list[str] = []
        self.num_val_runs = 0

    def _t_values(self) -> tuple[float, ...]:
        return tuple(dict.fromkeys([1.0, *[float(t) for t in self.cfg.t_values]]))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for key, metric in self.metrics.items():
            self.metrics[key] = metric.to(pl_module.device)
            metric.reset()
        self.rows = []

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        keep = [i for i, task in enumerate(batch.task.tolist()) if task != TASK_TEXT]
        if not keep:
            return
        images = batch.images[keep]
        recon = pl_module.reconstruct(images, t_values=self._t_values(), seed=self.cfg.seed + batch_idx)
        update_metrics(self.metrics, images, recon)
        room = self.cfg.num_images - sum(r.shape[0] for r in self.rows)
        if room > 0:
            cols = [images, *[recon[k] for k in recon]]
            self.column_titles = ["original", *[_title(k) for k in recon]]
            self.rows.append(torch.stack(cols, dim=1)[:room].detach().cpu())  # B,cols,3,H,W

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for key, metric in self.metrics.items():
            if metric.update_called:
                pl_module.log(f"val/{key}", metric.compute(), sync_dist=False)
        show = self.num_val_runs % self.cfg.every_n_val == 0
        self.num_val_runs += 1
        if show and self.rows and trainer.is_global_zero:
            self.write_grid(trainer, torch.cat(self.rows))

    def write_grid(self, trainer: L.Trainer, rows_BK3HW: torch.Tensor) -> Path:
        """One grid row per example (original | VAE | D at each t) → TensorBoard and a PNG; returns the PNG path."""
        num_cols = rows_BK3HW.shape[1]
        grid = make_grid(to_unit(rows_BK3HW.flatten(0, 1)), nrow=num_cols, padding=2, pad_value=1.0)
        tiles = to_uint8(rows_BK3HW.flatten(0, 1)).permute(0, 2, 3, 1).cpu().numpy()
        log_image(trainer, "val/reconstructions", captioned_grid(tiles, num_cols, column_titles=self.column_titles))
        path = Path(trainer.default_root_dir) / "reconstructions" / f"step_{trainer.global_step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"num_val_runs": self.num_val_runs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_val_runs = int(state_dict.get("num_val_runs", 0))
