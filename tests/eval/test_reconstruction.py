"""Tests of the reconstruction metrics: PSNR/SSIM agree with reference implementations, detail error behaves."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchvision.transforms.functional import gaussian_blur

from cheers_pl.eval.reconstruction import (
    detail_error,
    high_frequency_mask,
    image_metrics,
    photo_images,
    psnr,
    reconstruction_scores,
    ssim,
    to_unit,
)
from cheers_pl.model.vision_tokenizer import VisionTokenizer, VisionTokenizerConfig


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return photo_images(64, ("astronaut", "coffee", "chelsea"))[0]


def test_photo_images_shape_range_and_labels() -> None:
    images, labels = photo_images(32, ("astronaut", "rocket"))
    assert images.shape == (4, 3, 32, 32)
    assert labels == ["astronaut/crop", "astronaut/resize", "rocket/crop", "rocket/resize"]
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.1
    assert not torch.allclose(images[0], images[1])  # crop and resize are different views


def test_psnr_agrees_with_skimage_and_torchmetrics(photos: torch.Tensor) -> None:
    target = to_unit(photos)
    pred = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    ours = psnr(pred, target)
    for i in range(len(target)):
        ref = sk_psnr(target[i].numpy().astype(np.float64), pred[i].numpy().astype(np.float64), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-3)
    metric = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")
    assert ours.mean().item() == pytest.approx(metric(pred, target).item(), abs=1e-4)


def test_ssim_agrees_with_torchmetrics_and_orders_noise(photos: torch.Tensor) -> None:
    target = to_unit(photos)
    slight = (target + 0.02 * torch.randn_like(target)).clamp(0, 1)
    heavy = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    metric = StructuralSimilarityIndexMeasure(data_range=1.0)
    assert ssim(slight, target).mean().item() == pytest.approx(metric(slight, target).item(), abs=1e-5)
    assert torch.allclose(ssim(target, target), torch.ones(len(target)), atol=1e-5)
    assert (ssim(heavy, target) < ssim(slight, target)).all()


def test_detail_error_is_zero_for_identical_and_grows_with_blur(photos: torch.Tensor) -> None:
    target = to_unit(photos)
    assert torch.allclose(detail_error(target, target), torch.zeros(len(target)))
    errors = [detail_error(gaussian_blur(target, [9, 9], [s, s]), target) for s in (0.5, 1.0, 2.0)]
    assert (errors[0] > 0.05).all()
    assert (errors[0] < errors[1]).all() and (errors[1] < errors[2]).all()
    assert (errors[2] < 1.0 + 1e-4).all()  # a blur can only remove detail, never add
    flat = target.mean(dim=(2, 3), keepdim=True).expand_as(target)
    assert torch.allclose(detail_error(flat, target), torch.ones(len(target)), atol=1e-4)


def test_detail_error_ignores_low_frequencies(photos: torch.Tensor) -> None:
    target = to_unit(photos)
    shifted = target + 0.1  # a brightness change is all DC: PSNR drops, detail error does not move
    assert torch.allclose(detail_error(shifted, target), torch.zeros(len(target)), atol=1e-5)
    assert (psnr(shifted, target) < 25).all()


def test_high_frequency_mask_band_and_validation() -> None:
    mask = high_frequency_mask(8, 8, cutoff=0.5)
    assert not mask[0, 0] and mask[4, 4] and not mask[1, 0]  # DC and 1/8 cycle/pixel are low, Nyquist is high
    with pytest.raises(ValueError, match="cutoff"):
        high_frequency_mask(8, 8, cutoff=2.0)
    with pytest.raises(ValueError, match="shape"):
        detail_error(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4))


def test_reconstruction_scores_on_tiny_tokenizer(photos: torch.Tensor) -> None:
    tokenizer = VisionTokenizer(VisionTokenizerConfig()).eval()
    photos = photos[:3]
    scores, first = reconstruction_scores(tokenizer, photos, batch_size=2)
    assert set(scores) == {"vae", "decoder_t1"}
    assert set(scores["vae"]) == {"psnr", "ssim", "detail_error"}
    assert first["vae"].shape == (2, 3, 64, 64)
    # D starts as a copy of the VAE decoder, so at t = 1 it reproduces the VAE round trip exactly
    assert scores["decoder_t1"] == pytest.approx(scores["vae"], rel=1e-4)
    direct = image_metrics(tokenizer.vae.decode(tokenizer.encode(photos)), photos)
    assert scores["vae"]["psnr"] == pytest.approx(direct["psnr"].mean().item(), rel=1e-4)
