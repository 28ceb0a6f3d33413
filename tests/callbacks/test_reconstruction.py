"""Tests of the reconstruction callback: metrics against torchmetrics, logging and the grid PNG."""

import types
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from cheers_pl.callbacks.reconstruction import (
    ReconstructionCallback,
    ReconstructionConfig,
    evaluate_reconstruction,
    photo_crops,
)


class FakeStage:
    """Duck-typed stage: `reconstruct` returns the input (VAE) and the input plus fixed noise (D)."""

    device = torch.device("cpu")

    def __init__(self, noise: float = 0.1) -> None:
        self.noise = noise
        self.logged: dict[str, float] = {}

    def reconstruct(self, images: torch.Tensor, t_values=(1.0, 0.5), seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1234)
        out = {"vae": images.clone()}
        for t in t_values:
            out[f"decoder_t{float(t)}"] = (images + self.noise * torch.randn(images.shape, generator=g)).clamp(-1, 1)
        return out

    def log(self, name: str, value: torch.Tensor, **kwargs) -> None:
        self.logged[name] = float(value)


def _trainer(tmp_path: Path) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        sanity_checking=False, is_global_zero=True, loggers=[], default_root_dir=str(tmp_path), global_step=7
    )


def _batch(n: int) -> types.SimpleNamespace:
    images = torch.rand(n, 3, 32, 32) * 2 - 1
    task = torch.zeros(n, dtype=torch.long)
    task[-1] = 2  # text-only row: skipped
    return types.SimpleNamespace(images=images, task=task, meta=[{}] * n)


def test_callback_logs_psnr_ssim_and_writes_grid(tmp_path: Path) -> None:
    cb = ReconstructionCallback(ReconstructionConfig(num_images=3, t_values=[1.0, 0.5]))
    stage, trainer = FakeStage(), _trainer(tmp_path)
    batches = [_batch(4), _batch(4)]
    cb.on_validation_epoch_start(trainer, stage)
    for i, b in enumerate(batches):
        cb.on_validation_batch_end(trainer, stage, None, b, i)
    cb.on_validation_epoch_end(trainer, stage)
    assert set(stage.logged) == {"val/psnr_vae", "val/psnr_decoder_t1", "val/ssim_vae", "val/ssim_decoder_t1"}
    assert stage.logged["val/psnr_vae"] == float("inf")  # identical images
    assert stage.logged["val/ssim_vae"] == pytest.approx(1.0, abs=1e-4)
    # D: mean of per-image PSNRs on [0, 1] images, as torchmetrics computes it image by image
    images = torch.cat([b.images[:-1] for b in batches])
    recon = torch.cat([stage.reconstruct(b.images[:-1], (1.0,))["decoder_t1.0"] for b in batches])
    unit = lambda x: ((x + 1) / 2).clamp(0, 1)  # noqa: E731
    pairs = zip(recon, images, strict=True)
    expected = torch.stack([peak_signal_noise_ratio(unit(r), unit(x), data_range=1.0) for r, x in pairs])
    assert stage.logged["val/psnr_decoder_t1"] == pytest.approx(expected.mean().item(), rel=1e-4)
    assert 10 < stage.logged["val/psnr_decoder_t1"] < 40
    png = tmp_path / "reconstructions" / "step_000007.png"
    assert png.exists()
    from PIL import Image

    width, height = Image.open(png).size
    assert (width, height) == (4 * 34 + 2, 3 * 34 + 2)  # 4 columns (orig | VAE | D t=1 | D t=0.5), 3 rows

    # a second validation run starts from reset metrics
    stage.noise = 0.3
    cb.on_validation_epoch_start(trainer, stage)
    cb.on_validation_batch_end(trainer, stage, None, batches[0], 0)
    cb.on_validation_epoch_end(trainer, stage)
    assert stage.logged["val/psnr_decoder_t1"] < expected.mean().item() - 5


def test_evaluate_reconstruction_on_photo_crops() -> None:
    crops = photo_crops(64)
    assert crops.shape[1:] == (3, 64, 64) and crops.shape[0] >= 20
    assert crops.min() >= -1 and crops.max() <= 1
    out = evaluate_reconstruction(FakeStage(noise=0.05), crops[:8], batch_size=4)
    assert out["psnr_vae"] == float("inf") and 20 < out["psnr_decoder_t1"] < 40


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="num_images"):
        ReconstructionConfig(num_images=0)
    with pytest.raises(ValueError, match="t_values"):
        ReconstructionConfig(t_values=[1.5])
