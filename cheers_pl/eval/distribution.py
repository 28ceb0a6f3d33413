"""Distribution section of the evaluate command: FID and CLIP score, only where the run configures them.

The metrics are those of the validation callbacks (`cheers_pl.eval.fid`, `cheers_pl.eval.clip_score`),
configured by the checkpoint's own `callbacks.fid` / `callbacks.clip_score` entries: FID compares the real images
of the split's samples (generation transform: shorter side resized, centre crop) with images generated from their
first captions, in the configured feature space (`semantic`: the model's own encoder; `inception`: a local
InceptionV3 file); the CLIP score compares generated images with their captions (a local CLIP directory or the
tokenizer stage's contrastive towers). A metric that is not configured, or cannot run here (missing weights, no
towers), is reported as skipped with the reason. Generated images are shared between the two metrics.

Legend: N images, H/W image side, D feature width.
"""

from collections.abc import Sequence
from typing import Any

import torch

from cheers_pl.data.processing import decode_image, generation_transform, to_uint8, to_unit
from cheers_pl.data.tasks import parse_raw
from cheers_pl.data.webdataset import EventCounter, SkipSample, raw_samples, resolve_shards
from cheers_pl.eval.clip_score import ContrastiveCLIPScore, local_clip_score
from cheers_pl.eval.fid import fid_metric

METRICS: tuple[str, ...] = ("fid", "clip_score")


def load_caption_pairs(shards: str, image_size: int, num: int) -> tuple[torch.Tensor, list[str]]:
    """The first `num` (image N×3×H×W in [-1, 1], caption) pairs of a split, in shard order (bad samples skipped)."""
    images, captions, _ = load_split_samples(shards, image_size, num)
    return images, captions


def load_split_samples(shards: str, image_size: int, num: int) -> tuple[torch.Tensor, list[str], list[dict]]:
    """`load_caption_pairs` plus each sample's metadata (the synthetic world's `scene` among it)."""
    images, captions, metas = [], [], []
    for raw in raw_samples(resolve_shards(shards), EventCounter(), rank=0, world_size=1, resampled=False, seed=0):
        try:
            image_bytes, caption, meta = parse_raw(raw)
            img, _ = decode_image(image_bytes)
        except (SkipSample, ValueError):
            continue
        first = [c for c in meta.get("captions", []) if isinstance(c, str) and c]
        images.append(generation_transform(img, image_size))
        captions.append(first[0] if first else caption)
        metas.append(meta)
        if len(captions) >= num:
            break
    return (torch.stack(images) if images else torch.empty(0)), captions, metas


def _fid(stage: Any, cfg: Any, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    metric = fid_metric(cfg.feature, cfg.inception_weights, stage.semantic_features, real).to(real.device)
    if cfg.feature == "inception":  # Inception takes [0, 1]; the semantic encoder [-1, 1]
        real, fake = to_unit(real), to_unit(fake)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute()


def _clip_score(stage: Any, cfg: Any, fake: torch.Tensor, captions: list[str]) -> torch.Tensor:
    if cfg.model is not None:
        metric = local_clip_score(cfg.model).to(fake.device)
        metric.update(to_uint8(fake).to(fake.device), captions)
        return metric.compute()
    if getattr(stage.model, "contrastive", None) is None:
        raise ValueError("callbacks.clip_score.model is None and the model has no contrastive towers to score with")
    metric = ContrastiveCLIPScore(stage.contrastive_embed).to(fake.device)
    metric.update(fake, captions)
    return metric.compute()


def evaluate_distribution(
    stage: Any,
    callbacks: dict[str, Any],
    shards: str,
    image_size: int,
    sampling: dict[str, Any],
    split: str,
    batch_size: int = 16,
) -> dict[str, Any]:
    """FID / CLIP score where `callbacks` (the run's `cfg.callbacks`) configures them; skipped entries say why.

    Sampling settings of a metric's own config (`num_steps`, `guidance_scale`) win over `sampling`; chunk i of the
    generated images uses seed `cfg.seed + i` (as the callbacks).
    """
    configured = {m: callbacks[m] for m in METRICS if m in callbacks}
    out: dict[str, Any] = {
        m: {"skipped": f"not configured (the checkpoint's config has no callbacks.{m})"}
        for m in METRICS
        if m not in configured
    }
    if not configured:
        return out
    if not hasattr(stage, "generate_images"):
        return {**out, **{m: {"skipped": "the stage cannot generate images"} for m in configured}}
    num = max(c.num_images for c in configured.values())
    real, captions = load_caption_pairs(shards, image_size, num)
    device = next(stage.parameters()).device
    for name, cfg in configured.items():
        n = min(cfg.num_images, len(captions))
        settings = dict(sampling)
        settings.update({k: getattr(cfg, k) for k in ("num_steps", "guidance_scale") if getattr(cfg, k) is not None})
        protocol = {"split": split, "num_images": n, "seed": cfg.seed, "batch_size": batch_size, **settings}
        if n < 2:
            out[name] = {"skipped": f"only {n} samples with captions in split {split!r} (need 2)"}
            continue
        chunks = [
            stage.generate_images(captions[s : s + batch_size][: n - s], seed=cfg.seed + i, **settings).images
            for i, s in enumerate(range(0, n, batch_size))
        ]
        fake = torch.cat(chunks).to(device)
        try:
            if name == "fid":
                value = _fid(stage, cfg, real[:n].to(device), fake)
                protocol["feature"] = cfg.feature
            else:
                value = _clip_score(stage, cfg, fake, captions[:n])
                protocol["scorer"] = cfg.model or "model.contrastive (tokenizer-stage towers)"
        except ValueError as err:
            out[name] = {"skipped": str(err)}
            continue
        out[name] = {"value": float(value), "protocol": protocol}
    return {m: out[m] for m in METRICS}


def skipped(reason: str, names: Sequence[str] = METRICS) -> dict[str, Any]:
    """A distribution section where every metric is skipped for `reason`."""
    return {m: {"skipped": reason} for m in names}
