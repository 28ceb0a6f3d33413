"""Reconstruction quality of the unified vision tokenizer: PSNR, SSIM and detail error (DESIGN.md §5).

Two reconstructions of an image x in [-1, 1] are measured against x:
- `vae`: the frozen VAE round trip, `vae.decode(encode(x))`;
- `decoder_t1`: the pixel decoder D at t = 1 (the understanding input), `D(vae.to_raw(encode(x)))`.

Metrics are per image on [0, 1] pixels (clamped), then averaged:
- PSNR with data range 1 over all channels and pixels (torchmetrics `peak_signal_noise_ratio`, `dim=(1, 2, 3)`);
- SSIM, torchmetrics default (Gaussian window 11, σ = 1.5, k1 = 0.01, k2 = 0.03, data range 1);
- detail error, a high-frequency spectral error: with F the orthonormal 2-D DFT of each channel and H the band of
  spatial frequencies whose radius exceeds `DETAIL_CUTOFF` × Nyquist (|f| > 0.25 cycles/pixel by default),
  `detail_error = ‖H·(F x̂ − F x)‖₂ / (‖H·F x‖₂ + ε)` over the three channels. It is 0 for a perfect
  reconstruction, 1 when all fine detail is lost (a flat or strongly blurred x̂), above 1 when x̂ adds spurious
  high-frequency content (e.g. an untrained decoder's noise), and it grows strictly with
  the σ of a Gaussian blur, which damps every frequency more the larger σ is. It isolates what PSNR averages away:
  edges, textures and glyph strokes, the "patch details" that Cheers routes around the semantic encoder.

Image sets: the synthetic test scenes (from the shards) and `photo_images`, 64×64 views of scikit-image's
bundled colour photos (a centre crop at native resolution, dense in detail, and the whole photo's centre square
resized with antialiasing) — natural images that the synthetic-world tokenizer never saw.

Legend: B images, H/W image side.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from cheers_pl.data.processing import to_uint8, to_unit
from cheers_pl.data.synthetic_scene import Scene, SyntheticConfig
from cheers_pl.eval.scene_parser import aggregate_matches, match_scene, parse_scene

PHOTO_NAMES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel")
DETAIL_CUTOFF = 0.5  # fraction of the Nyquist frequency (0.5 cycles/pixel) where the "detail" band starts
METRICS: tuple[str, ...] = ("psnr", "ssim", "detail_error")
_EPS = 1e-8


def psnr(pred_B3HW: torch.Tensor, target_B3HW: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB, B) of [0, 1] images, data range 1."""
    return peak_signal_noise_ratio(pred_B3HW, target_B3HW, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(pred_B3HW: torch.Tensor, target_B3HW: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (B) of [0, 1] images, torchmetrics' default Gaussian window."""
    return structural_similarity_index_measure(pred_B3HW, target_B3HW, data_range=1.0, reduction="none")


def high_frequency_mask(height: int, width: int, cutoff: float = DETAIL_CUTOFF, device: torch.device | None = None):
    """Boolean H×W mask of the DFT bins whose radial frequency exceeds `cutoff` × Nyquist."""
    if not 0.0 <= cutoff < np.sqrt(2):
        raise ValueError(f"cutoff must be in [0, √2) of the Nyquist frequency, got {cutoff}")
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.fftfreq(width, device=device)[None, :]
    return torch.sqrt(fy**2 + fx**2) > cutoff * 0.5


def detail_error(pred_B3HW: torch.Tensor, target_B3HW: torch.Tensor, cutoff: float = DETAIL_CUTOFF) -> torch.Tensor:
    """Per-image relative high-frequency spectral error (B), see the module docstring."""
    if pred_B3HW.shape != target_B3HW.shape or pred_B3HW.ndim != 4:
        raise ValueError(f"need two B×C×H×W tensors of one shape, got {pred_B3HW.shape} and {target_B3HW.shape}")
    mask_HW = high_frequency_mask(*target_B3HW.shape[-2:], cutoff=cutoff, device=target_B3HW.device)
    spec_pred = torch.fft.fft2(pred_B3HW.double(), norm="ortho")
    spec_target = torch.fft.fft2(target_B3HW.double(), norm="ortho")
    diff = ((spec_pred - spec_target).abs() ** 2 * mask_HW).sum(dim=(1, 2, 3)).sqrt()
    ref = ((spec_target.abs() ** 2) * mask_HW).sum(dim=(1, 2, 3)).sqrt()
    return (diff / (ref + _EPS)).float()


def image_metrics(pred_B3HW: torch.Tensor, target_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
    """PSNR, SSIM and detail error per image (each B) of images in [-1, 1]."""
    pred, target = to_unit(pred_B3HW), to_unit(target_B3HW)
    return {"psnr": psnr(pred, target), "ssim": ssim(pred, target), "detail_error": detail_error(pred, target)}


def photo_images(size: int = 64, names: tuple[str, ...] = PHOTO_NAMES) -> tuple[torch.Tensor, list[str]]:
    """Two size×size views of each bundled scikit-image photo, B×3×size×size in [-1, 1], and their names.

    Views: `<name>/crop` (native-resolution centre crop) and `<name>/resize` (centre square, antialiased resize).
    """
    from skimage import data

    images, labels = [], []
    for name in names:
        img = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())[..., :3]).permute(2, 0, 1).float()
        img = img / 127.5 - 1
        h, w = img.shape[-2:]
        if min(h, w) < size:
            raise ValueError(f"photo {name!r} ({h}×{w}) is smaller than size={size}")
        top, left = (h - size) // 2, (w - size) // 2
        images.append(img[:, top : top + size, left : left + size])
        side = min(h, w)
        square = img[:, (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        images.append(F.interpolate(square[None], size=(size, size), mode="bilinear", antialias=True)[0])
        labels += [f"{name}/crop", f"{name}/resize"]
    return torch.stack(images).clamp(-1, 1), labels


@torch.no_grad()
def reconstruct(vision: torch.nn.Module, images_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reconstructions B×3×H×W in [-1, 1]: "vae" and, when the vision tokenizer has a pixel decoder, "decoder_t1"."""
    x1 = vision.encode(images_B3HW)
    out = {"vae": vision.vae.decode(x1)}
    if vision.pixel_decoder is not None:
        out["decoder_t1"] = vision.decode_pixels(x1)
    return out


@torch.no_grad()
def reconstruction_scores(
    vision: torch.nn.Module, images_B3HW: torch.Tensor, batch_size: int = 32
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """Mean PSNR / SSIM / detail error of every reconstruction over the images, and the first batch's outputs.

    Returns:
        ({"vae": {"psnr", "ssim", "detail_error"}, "decoder_t1": {...}}, first batch's reconstructions on CPU).
    """
    if len(images_B3HW) == 0:
        raise ValueError("reconstruction_scores needs at least one image")
    device = next(vision.parameters()).device
    values: dict[str, dict[str, list[torch.Tensor]]] = {}
    first: dict[str, torch.Tensor] = {}
    for start in range(0, len(images_B3HW), batch_size):
        x = images_B3HW[start : start + batch_size].to(device)
        recon = reconstruct(vision, x)
        if not first:
            first = {k: v.float().cpu() for k, v in recon.items()}
        for key, pred in recon.items():
            for metric, per_image in image_metrics(pred, x).items():
                values.setdefault(key, {}).setdefault(metric, []).append(per_image.cpu())
    scores = {key: {m: float(torch.cat(v).mean()) for m, v in per.items()} for key, per in values.items()}
    return scores, first


def parser_recovery(images_B3HW_uint8: torch.Tensor, scenes: list[Scene], cfg: SyntheticConfig) -> dict[str, float]:
    """Share of the true objects whose attributes the scene parser recovers from (reconstructed) images.

    Returns:
        The pooled `aggregate_matches` fractions (shape, color, size, texture, digit, region, all; count = share of
        images with the right number of objects) plus `digit_objects`: digit accuracy over objects that carry one.
    """
    results, digits = [], [0, 0]
    for image, scene in zip(images_B3HW_uint8.permute(0, 2, 3, 1).cpu().numpy(), scenes, strict=True):
        parsed = parse_scene(image, cfg)
        results.append(match_scene(parsed, scene))
        for obj in scene.objects:
            if obj.digit is None:
                continue
            digits[1] += 1
            near = [p for p in parsed if abs(p.x - obj.x) + abs(p.y - obj.y) <= scene.image_size / 8]
            digits[0] += int(any(p.digit == obj.digit for p in near))
    pooled = {k: round(v, 4) for k, v in aggregate_matches(results).items()}
    pooled["digit_objects"] = round(digits[0] / digits[1], 4) if digits[1] else float("nan")
    return pooled


@torch.no_grad()
def recovery_scores(
    vision: torch.nn.Module, images_B3HW: torch.Tensor, scenes: list[Scene], cfg: SyntheticConfig, batch_size: int = 32
) -> dict[str, dict[str, float]]:
    """`parser_recovery` of every reconstruction of `reconstruct` ("vae", "decoder_t1") over the images."""
    device = next(vision.parameters()).device
    recon: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images_B3HW), batch_size):
        for key, value in reconstruct(vision, images_B3HW[start : start + batch_size].to(device)).items():
            recon.setdefault(key, []).append(to_uint8(value).cpu())
    return {key: parser_recovery(torch.cat(parts), scenes, cfg) for key, parts in recon.items()}
