"""WebDataset shards in the img2dataset layout: writing, and a fault-tolerant streaming reader.

A sample is `<key>.png|jpg|jpeg|webp` (image), `<key>.txt` (caption), `<key>.json` (metadata). The reader accepts
shards made by any tool (`tar`, `webdataset.ShardWriter`, img2dataset). Read errors never end a run: a truncated or
unreadable tar ends that shard, and every failure is logged and counted by `EventCounter`, whose counts travel with
the next yielded sample to the main process (DataLoader workers cannot share counters).
"""

import glob
import io
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


class SkipSample(Exception):
    """Raised by sample processing for a bad sample; `reason` becomes the counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class EventCounter:
    """Counts skipped samples and conversions in one process; `drain()` hands out the counts since the last call."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()

    def add(self, event: str, detail: str = "") -> None:
        self.total[event] += 1
        self._pending[event] += 1
        if event.startswith("skip/"):
            log.warning("data: %s %s", event, detail)

    def drain(self) -> dict[str, int]:
        out, self._pending = dict(self._pending), Counter()
        return out

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset exception handler: count and continue with the next member or shard."""
        reason = "truncated_tar" if isinstance(exn, (tarfile.ReadError, EOFError)) else "read_error"
        self.add(f"skip/{reason}", repr(exn)[:300])
        return True


def encode_png(image: np.ndarray) -> bytes:
    """uint8 H×W×3 → PNG bytes (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(samples: Iterable[dict], path: str | Path) -> int:
    """Writes samples `{key, image (uint8 H×W×3), caption, json}` into one tar with `webdataset.TarWriter`.

    Returns:
        The number of samples written.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(
                {"__key__": s["key"], "png": encode_png(s["image"]), "txt": s["caption"], "json": json.dumps(s["json"])}
            )
            count += 1
    return count


def resolve_shards(spec: str) -> list[str]:
    """Expands a shard spec: a glob (`dir/train-*.tar`), brace notation (`train-{000000..000009}.tar`) or a list
    joined by `::`.

    Raises:
        ValueError: when the spec matches no file.
    """
    urls: list[str] = []
    for part in spec.split("::"):
        if any(c in part for c in "*?["):
            urls += sorted(glob.glob(part))
        else:
            urls += wds.shardlists.expand_urls(part)
    local_missing = [u for u in urls if "://" not in u and not Path(u).exists()]
    if not urls or local_missing:
        raise ValueError(f"shard spec {spec!r} matches no files (missing: {local_missing[:3]}); make data-synthetic?")
    return urls


def _worker_info() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def raw_samples(
    urls: list[str],
    counter: EventCounter,
    *,
    rank: int,
    world_size: int,
    resampled: bool,
    seed: int,
) -> Iterator[dict]:
    """Streams raw samples (dicts of bytes by extension) for this rank and DataLoader worker.

    Finite mode (evaluation) partitions the data exactly: shard-level when there are at least as many shards as
    rank×worker slots, otherwise sample-level (every slot reads all shards and keeps every n-th sample).
    Resampled mode (training) draws shards with replacement forever, from the rank's own shards when there are
    enough, seeded per rank and worker.
    """
    worker, num_workers = _worker_info()
    slot, num_slots = rank * num_workers + worker, world_size * num_workers
    if resampled:
        own = urls[rank::world_size] if len(urls) >= world_size else urls
        rng = np.random.default_rng([seed, rank, worker])
        shard_iter: Iterable[str] = (own[int(rng.integers(len(own)))] for _ in iter(int, 1))
        keep: Callable[[int], bool] = lambda i: True  # noqa: E731
    elif len(urls) >= num_slots:
        shard_iter, keep = urls[slot::num_slots], lambda i: True
    else:
        shard_iter, keep = urls, lambda i: i % num_slots == slot
    stream = wds.tariterators.tarfile_samples(({"url": u} for u in shard_iter), handler=counter.tar_handler)
    for index, sample in enumerate(stream):
        if keep(index):
            yield sample
