"""The per-rank streams of a split: `ExampleStream` (raw shard samples → `Example`s) and `EvenBatches` (evaluation
batches that end on every rank together).

Training streams are resumable windows (`cheers_pl.data.resumable`); evaluation streams are finite, unshuffled and
partitioned exactly across ranks and workers (`raw_samples`). A bad sample is skipped and counted; a stream that
skips `max_consecutive_skips` samples in a row raises a `ValueError` with the skip counts instead of looping forever.
"""

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from cheers_pl.data.batch import Batch, Example
from cheers_pl.data.resumable import Cursor, own_shards, windows
from cheers_pl.data.tasks import ExampleFactory
from cheers_pl.data.webdataset import EventCounter, SkipSample, raw_samples

log = logging.getLogger(__name__)


class ExampleStream(IterableDataset):
    """One split as a stream of `Example`s for one rank; each DataLoader worker reads its own part.

    Training streams (`resampled`) are `cheers_pl.data.resumable.windows` streams, started after `resume[worker]`
    when given; `worker_offset` renumbers the DataLoader's workers (logical = physical + offset, mod workers).
    Evaluation streams are finite, unshuffled and partitioned exactly (`raw_samples`).
    """

    def __init__(
        self,
        urls: list[str],
        factory: ExampleFactory,
        *,
        rank: int,
        world_size: int,
        resampled: bool,
        shuffle_buffer: int,
        seed: int,
        resume: dict[int, tuple[int, ...]] | None = None,
        worker_offset: int = 0,
        max_consecutive_skips: int = 1000,
    ) -> None:
        super().__init__()
        self.urls, self.factory = urls, factory
        self.resume, self.worker_offset, self.max_consecutive_skips = resume or {}, worker_offset, max_consecutive_skips
        self.rank, self.world_size, self.resampled = rank, world_size, resampled
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.counter = EventCounter()

    def _raw(self, worker: int) -> Iterator[tuple[tuple[int, ...] | None, dict, random.Random]]:
        if self.resampled:
            start = self.resume.get(worker)
            for cursor, raw, rng in windows(
                own_shards(self.urls, self.rank, self.world_size), self.counter, seed=self.seed, rank=self.rank,
                worker=worker, window=max(1, self.shuffle_buffer), start=Cursor(*start) if start else None,
            ):  # fmt: skip
                yield (worker, *cursor), raw, rng
            return
        rng = random.Random(f"{self.seed}/{self.rank}/{worker}/tasks")  # str seeds are stable across processes
        for raw in raw_samples(
            self.urls, self.counter, rank=self.rank, world_size=self.world_size, resampled=False, seed=self.seed
        ):
            yield None, raw, rng

    def __iter__(self) -> Iterator[Example]:
        info = torch.utils.data.get_worker_info()
        num_workers = 1 if info is None else info.num_workers
        worker = ((0 if info is None else info.id) + self.worker_offset) % num_workers
        skipped: Counter[str] = Counter()  # since the last yielded example
        for cursor, raw, rng in self._raw(worker):
            try:
                example = self.factory(raw, rng, self.counter)
            except SkipSample as skip:
                self.counter.add(f"skip/{skip.reason}", str(skip))
                skipped[skip.reason] += 1
                if skipped.total() >= self.max_consecutive_skips:
                    raise ValueError(
                        f"data: rank {self.rank} worker {worker}: the last {skipped.total()} samples were all skipped "
                        f"({dict(skipped)}; data.max_consecutive_skips={self.max_consecutive_skips}); shards "
                        f"{self.urls[:3]}{' ...' if len(self.urls) > 3 else ''} do not fit this config (e.g. "
                        "data.max_seq_len, image fields)"
                    ) from skip
                continue
            skipped.clear()
            example.events, example.cursor = self.counter.drain(), cursor
            yield example
        trailing = self.counter.drain()  # nothing follows to carry them: log them with the worker's totals
        if trailing:
            log.warning("data: rank %d worker %d: %s after the last example; totals %s", self.rank, worker, trailing,
                        dict(self.counter.total))  # fmt: skip


class EvenBatches:
    """An evaluation loader that stops on every rank when any rank's share is exhausted.

    `has_more(local) -> all ranks` is one boolean all-reduce per batch (the strategy's `reduce_boolean_decision`).
    The batches a longer rank leaves out are read to count them and logged as a warning.
    """

    def __init__(self, loader: DataLoader, has_more: Callable[[bool], bool], split: str, rank: int) -> None:
        self.loader, self.has_more, self.split, self.rank = loader, has_more, split, rank
        self.left_out = 0  # samples of this rank not evaluated in the last pass

    def __iter__(self) -> Iterator[Batch]:
        batches = iter(self.loader)
        done = 0
        while True:
            batch = next(batches, None)
            if not self.has_more(batch is not None):
                break
            done += 1
            yield batch
        self.left_out = (len(batch) if batch is not None else 0) + sum(len(b) for b in batches)
        if self.left_out:
            log.warning("data: %s on rank %d stops after %d batches with %d samples left out: another rank's share "
                        "ended first (shards split unevenly over ranks x workers)", self.split, self.rank, done,
                        self.left_out)  # fmt: skip
