"""Data benchmark: unpacking, the plain folder dataset, and headroom/vs-plain ratios from measured rates."""

import pytest
import torch

from cheers_pl.bench.data import FolderImages, bench_data, unpack_images


def test_unpack_and_folder_dataset(tiny_cfg, tmp_path) -> None:
    paths = unpack_images(tiny_cfg.data.shards("train"), tmp_path, 5)
    assert len(paths) == 5 and all(p.exists() for p in paths)
    x = FolderImages(paths, 32)[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_unpack_too_many_raises(tiny_cfg, tmp_path) -> None:
    with pytest.raises(ValueError, match="fewer than"):
        unpack_images(tiny_cfg.data.shards("train"), tmp_path, 10**6)


def test_bench_data_ratios(tiny_cfg, tmp_path) -> None:
    out = bench_data(tiny_cfg.data, consume_samples_per_s=10.0, num_batches=1, repeats=1, warmup=0, workdir=tmp_path)
    assert out["batch_size"] == 4 and out["num_workers"] == 0
    assert out["headroom"] == pytest.approx(out["datamodule_samples_per_s"] / 10.0)
    assert out["vs_plain"] == pytest.approx(out["datamodule_samples_per_s"] / out["plain_samples_per_s"])
    assert not list(tmp_path.iterdir())  # the unpacked images are removed
    assert bench_data(tiny_cfg.data, None, 1, 1, 0, tmp_path)["headroom"] is None
