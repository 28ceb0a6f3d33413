"""Benchmark 3, data pipeline: DataModule samples/s vs what a training step consumes, and vs plain PIL loading.

The DataModule (WebDataset shards → task mixture → tokenised, left-padded `Batch`es) is read in steady state:
worker start-up and `warmup` batches are excluded, then each of `repeats` timed repeats reads `num_batches` batches.
The baseline is a plain map-style `torch.utils.data.Dataset` over the same images unpacked into a folder (PIL open +
RGB + tensor in [-1, 1], no text), read by a DataLoader with the same batch size and worker count.
"""

import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cheers_pl.bench.measure import ratio, timed
from cheers_pl.data.datamodule import CheersDataModule, DataConfig
from cheers_pl.data.processing import to_tensor
from cheers_pl.data.webdataset import IMAGE_EXTENSIONS, resolve_shards


def unpack_images(shard_spec: str, out_dir: str | Path, num_images: int) -> list[Path]:
    """Writes the first `num_images` images of the shards as files (bytes unchanged); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for url in resolve_shards(shard_spec):
        with tarfile.open(url) as tar:
            for member in tar:
                if len(paths) >= num_images:
                    return paths
                ext = member.name.rsplit(".", 1)[-1].lower()
                if not member.isfile() or ext not in IMAGE_EXTENSIONS:
                    continue
                path = out_dir / f"{len(paths):07d}.{ext}"
                path.write_bytes(tar.extractfile(member).read())
                paths.append(path)
    if len(paths) < num_images:
        raise ValueError(f"shards {shard_spec!r} hold {len(paths)} images, fewer than the {num_images} needed")
    return paths


class FolderImages(Dataset):
    """Images in a folder → 3×S×S float tensors in [-1, 1] (PIL decode, RGB, resize only when the size differs)."""

    def __init__(self, paths: list[Path], image_size: int) -> None:
        self.paths, self.image_size = paths, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as img:
            img = img.convert("RGB")
            if img.size != (self.image_size, self.image_size):
                img = img.resize((self.image_size, self.image_size), Image.BICUBIC)
            return to_tensor(img)


def _rate(batches: Iterator, batch_size: int, num_batches: int, repeats: int, warmup: int) -> dict:
    """Samples/s of reading `num_batches` batches, median over repeats, after `warmup` batches."""
    for _ in range(warmup):
        next(batches)

    def read() -> None:
        for _ in range(num_batches):
            next(batches)

    t = timed(read, repeats, 0)
    return {"samples_per_s": batch_size * num_batches / t["median_s"], "timing": t}


def bench_data(
    cfg: DataConfig,
    consume_samples_per_s: float | None = None,
    num_batches: int = 8,
    repeats: int = 5,
    warmup: int = 2,
    workdir: str | Path | None = None,
) -> dict:
    """DataModule throughput, its headroom over the training step, and the plain-folder baseline.

    Args:
        cfg: The data config (batch size and workers as in training).
        consume_samples_per_s: Samples/s a training step consumes (benchmark 4, same batch size); None skips the
            headroom ratio.
        num_batches: Batches per timed repeat.
        workdir: Where to unpack the images (default: a temporary directory, removed afterwards).

    Returns:
        `{"datamodule_samples_per_s", "plain_samples_per_s", "headroom", "vs_plain", ...}`.
    """
    dm = CheersDataModule(cfg, rank=0, world_size=1)
    loader = dm.train_dataloader()
    datamodule = _rate(iter(loader), cfg.batch_size, num_batches, repeats, warmup)
    needed = cfg.batch_size * (warmup + repeats * num_batches)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = unpack_images(cfg.shards("train"), tmp, needed)
        plain_loader = DataLoader(
            FolderImages(paths, cfg.image_size),
            batch_size=cfg.batch_size,
            shuffle=True,
            num_workers=cfg.num_workers,
            drop_last=True,
        )
        plain = _rate(iter(plain_loader), cfg.batch_size, num_batches, repeats, warmup)
    dm_sps, plain_sps = datamodule["samples_per_s"], plain["samples_per_s"]
    return {
        "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers,
        "num_batches_per_repeat": num_batches,
        "datamodule_samples_per_s": dm_sps,
        "plain_samples_per_s": plain_sps,
        "train_step_samples_per_s": consume_samples_per_s,
        "headroom": ratio(dm_sps, consume_samples_per_s) if consume_samples_per_s else None,
        "vs_plain": ratio(dm_sps, plain_sps),
        "aim": {"headroom": 5.0},
        "timing": {"datamodule": datamodule["timing"], "plain": plain["timing"]},
    }
