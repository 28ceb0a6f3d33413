"""`CheersDataModule`: streams WebDataset shards into typed `Batch`es of the three-task mixture.

Training streams are resampled and infinite (an epoch is whatever `max_steps` says); validation and test streams
are finite and partitioned exactly across ranks and DataLoader workers. Bad samples are skipped, logged and counted
(`Batch.events`), never fatal.
"""

import functools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from cheers_pl.data.batch import Example, collate
from cheers_pl.data.processing import SequenceBuilder
from cheers_pl.data.synthetic import SyntheticConfig
from cheers_pl.data.tasks import ExampleFactory, TaskWeights
from cheers_pl.data.text_tokenizer import load_tokenizer
from cheers_pl.data.webdataset import EventCounter, SkipSample, raw_samples, resolve_shards

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the shards are, how samples become batches, and how `make-shards` writes the synthetic world."""

    shard_dir: str = "data/shards/synthetic"  # `make-shards` writes here; default location of shards and tokenizer
    train_shards: str | None = None  # glob / brace spec / `::`-joined list; default: <shard_dir>/train-*.tar
    val_shards: str | None = None
    test_shards: str | None = None
    text_tokenizer: str | None = None  # local dir or hub name; default: <shard_dir>/tokenizer
    image_size: int = 64
    num_image_tokens: int = 16  # LLM positions per image block; must equal the model's (checked by train)
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 2
    shuffle_buffer: int = 500
    max_seq_len: int = 128
    task_weights: TaskWeights = field(default_factory=TaskWeights)
    seed: int = 0
    # `make-shards` (synthetic world)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    num_samples: dict[str, int] = field(default_factory=lambda: {"train": 20000, "val": 512, "test": 512})
    samples_per_shard: int = 1000
    tokenizer_vocab_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("image_size", "num_image_tokens", "batch_size", "eval_batch_size", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        unknown = set(self.num_samples) - set(SPLITS)
        if unknown:
            raise ValueError(f"data.num_samples has unknown splits {sorted(unknown)}; use {SPLITS}")

    def shards(self, split: str) -> str:
        spec = getattr(self, f"{split}_shards")
        return spec if spec is not None else str(Path(self.shard_dir) / f"{split}-*.tar")

    def tokenizer_path(self) -> str:
        return self.text_tokenizer if self.text_tokenizer is not None else str(Path(self.shard_dir) / "tokenizer")


class ExampleStream(IterableDataset):
    """One split as a stream of `Example`s for one rank; each DataLoader worker reads its own part."""

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
    ) -> None:
        super().__init__()
        self.urls, self.factory = urls, factory
        self.rank, self.world_size, self.resampled = rank, world_size, resampled
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.counter = EventCounter()

    def __iter__(self) -> Iterator[Example]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        rng = random.Random(f"{self.seed}/{self.rank}/{worker}/tasks")  # str seeds are stable across processes
        stream = raw_samples(
            self.urls, self.counter, rank=self.rank, world_size=self.world_size, resampled=self.resampled,
            seed=self.seed,
        )  # fmt: skip
        if self.shuffle_buffer > 1:
            shuffle_rng = random.Random(f"{self.seed}/{self.rank}/{worker}/shuffle")
            stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 4, rng=shuffle_rng)(stream)
        for raw in stream:
            try:
                example = self.factory(raw, rng, self.counter)
            except SkipSample as skip:
                self.counter.add(f"skip/{skip.reason}", str(skip))
                continue
            example.events = self.counter.drain()
            yield example
        trailing = self.counter.drain()  # nothing follows to carry them: log them with the worker's totals
        if trailing:
            log.warning("data: rank %d worker %d: %s after the last example; totals %s", self.rank, worker, trailing,
                        dict(self.counter.total))  # fmt: skip


class CheersDataModule(L.LightningDataModule):
    """Streams the configured shards; rank and world size come from the attached Trainer unless given."""

    def __init__(self, cfg: DataConfig, rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._rank, self._world_size = rank, world_size
        self.tokenizer = None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.cfg.tokenizer_path())

    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        if self._world_size is not None:
            return self._world_size
        return self.trainer.world_size if self.trainer is not None else 1

    def factory(self) -> ExampleFactory:
        self.setup()
        builder = SequenceBuilder(self.tokenizer, self.cfg.num_image_tokens)
        return ExampleFactory(builder, self.cfg.image_size, self.cfg.task_weights, self.cfg.max_seq_len)

    def dataset(self, split: str) -> ExampleStream:
        """The `Example` stream of a split for this rank (training is resampled and infinite)."""
        train = split == "train"
        return ExampleStream(
            resolve_shards(self.cfg.shards(split)),
            self.factory(),
            rank=self.rank,
            world_size=self.world_size,
            resampled=train,
            shuffle_buffer=self.cfg.shuffle_buffer if train else 0,
            seed=self.cfg.seed,
        )

    def _loader(self, split: str) -> DataLoader:
        batch_size = self.cfg.batch_size if split == "train" else self.cfg.eval_batch_size
        pad_id = self.tokenizer.pad_token_id if self.tokenizer is not None else 0
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            num_workers=self.cfg.num_workers,
            collate_fn=functools.partial(collate, pad_id=pad_id),
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
