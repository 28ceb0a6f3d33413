"""Shard writing and fault-tolerant reading (cheers_pl/data/webdataset.py)."""

import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from cheers_pl.data.synthetic import SyntheticConfig, make_sample
from cheers_pl.data.webdataset import EventCounter, raw_samples, resolve_shards, write_shard

SYN = SyntheticConfig()


def _read_all(urls: list[str], counter: EventCounter | None = None, **kw) -> list[dict]:
    counter = counter or EventCounter()
    opts = {"rank": 0, "world_size": 1, "resampled": False, "seed": 0, **kw}
    return list(raw_samples(urls, counter, **opts))


def test_write_read_round_trip_is_lossless(tmp_path: Path) -> None:
    samples = [make_sample(i, "val", SYN) for i in range(5)]
    assert write_shard(samples, tmp_path / "s-000000.tar") == 5
    raws = _read_all(resolve_shards(str(tmp_path / "s-*.tar")))
    assert [r["__key__"] for r in raws] == [s["key"] for s in samples]
    for raw, s in zip(raws, samples, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(raw["png"]))), s["image"])
        assert raw["txt"].decode() == s["caption"]
        assert json.loads(raw["json"]) == s["json"]


def _foreign_sample(i: int, fmt: str) -> tuple[str, bytes, bytes, bytes]:
    s = make_sample(i, "val", SYN)
    buf = io.BytesIO()
    Image.fromarray(s["image"]).save(buf, format=fmt.upper().replace("JPG", "JPEG"), quality=95)
    return s["key"], buf.getvalue(), s["caption"].encode(), json.dumps(s["json"]).encode()


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_shard_writer_made_shards_load(tmp_path: Path, fmt: str) -> None:
    with wds.ShardWriter(str(tmp_path / "f-%06d.tar"), maxcount=2, verbose=0) as sink:
        for i in range(3):
            key, img, txt, meta = _foreign_sample(i, fmt)
            sink.write({"__key__": key, fmt: img, "txt": txt, "json": meta})
    raws = _read_all(resolve_shards(str(tmp_path / "f-{000000..000001}.tar")))
    assert len(raws) == 3 and all(fmt in r for r in raws)


def test_tar_cli_made_shards_load(tmp_path: Path) -> None:
    files = []
    for i in range(2):
        key, img, txt, meta = _foreign_sample(i, "png")
        for ext, data in (("png", img), ("txt", txt), ("json", meta)):
            (tmp_path / f"{key}.{ext}").write_bytes(data)
            files.append(f"{key}.{ext}")
    subprocess.run(["tar", "cf", "cli.tar", *files], cwd=tmp_path, check=True)
    raws = _read_all([str(tmp_path / "cli.tar")])
    assert len(raws) == 2 and {"png", "txt", "json"} <= set(raws[0])


def test_truncated_tar_ends_that_shard_with_a_counted_error(tmp_path: Path) -> None:
    write_shard([make_sample(i, "val", SYN) for i in range(6)], tmp_path / "a.tar")
    write_shard([make_sample(i, "test", SYN) for i in range(3)], tmp_path / "b.tar")
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(data[: len(data) // 2 + 100])
    counter = EventCounter()
    raws = _read_all([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], counter)
    keys = [r["__key__"] for r in raws]
    assert all(f"test_{i:08d}" in keys for i in range(3))  # the next shard is read in full
    assert counter.total["skip/truncated_tar"] + counter.total["skip/read_error"] >= 1


def test_resolve_shards_errors_name_the_spec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing-here"):
        resolve_shards(str(tmp_path / "nothing-here-*.tar"))


def test_tarfile_is_real_tar(tmp_path: Path) -> None:
    write_shard([make_sample(0, "val", SYN)], tmp_path / "x.tar")
    with tarfile.open(tmp_path / "x.tar") as tar:
        assert sorted(m.name for m in tar.getmembers()) == sorted(f"val_00000000.{e}" for e in ("png", "txt", "json"))
