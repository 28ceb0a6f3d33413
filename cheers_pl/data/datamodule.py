"""`CheersDataModule`: streams WebDataset shards into typed `Batch`es of the three-task mixture.

Training streams are resampled and infinite (an epoch is whatever `max_steps` says); validation and test streams
are finite and partitioned exactly across ranks and DataLoader workers. Bad samples are skipped, logged and counted
(`Batch.events`), never fatal.

Exact resume: the DataModule's checkpoint state holds the number of training batches consumed and every rank's RNG
states (torch, CUDA, numpy, python) at save time. On resume each worker stream replays and drops its share of the
consumed batches (the streams are seeded, so the position is reproduced exactly; replaying costs decoding time), and
the RNG states are restored just before the first training batch, after the DataLoader has drawn its worker seeds,
so flow times, noise and guidance dropout continue as in the uninterrupted run.
"""

import functools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from cheers_pl.data.batch import Batch, Example, collate
from cheers_pl.data.processing import SequenceBuilder
from cheers_pl.data.synthetic import SyntheticConfig
from cheers_pl.data.tasks import ExampleFactory, TaskWeights
from cheers_pl.data.text_tokenizer import load_text_tokenizer
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
    text_tokenizer_vocab_size: int = 1024

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

    def text_tokenizer_path(self) -> str:
        return self.text_tokenizer if self.text_tokenizer is not None else str(Path(self.shard_dir) / "tokenizer")


def rng_states() -> dict:
    """The torch, CUDA, numpy and python RNG states as tensors and plain types (loadable with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    """Restores what `rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


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
        skip_batches: int = 0,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
        self.urls, self.factory = urls, factory
        self.skip_batches, self.batch_size = skip_batches, batch_size
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
        num_workers = 1 if info is None else info.num_workers
        # the DataLoader takes batches round-robin from its workers: this worker made every num_workers-th one
        to_skip = len(range(worker, self.skip_batches, num_workers)) * self.batch_size
        for raw in stream:
            try:
                example = self.factory(raw, rng, self.counter)
            except SkipSample as skip:
                self.counter.add(f"skip/{skip.reason}", str(skip))
                continue
            example.events = self.counter.drain()
            if to_skip:  # consumed before the checkpoint this run resumes from
                to_skip -= 1
                continue
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
        self.text_tokenizer = None
        self.train_batches = 0  # training batches handed to the model so far (resume position)
        self._pending_rng: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.text_tokenizer is None:
            self.text_tokenizer = load_text_tokenizer(self.cfg.text_tokenizer_path())

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
        builder = SequenceBuilder(self.text_tokenizer, self.cfg.num_image_tokens)
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
            skip_batches=self.train_batches if train else 0,
            batch_size=self.cfg.batch_size,
        )

    def _loader(self, split: str) -> DataLoader:
        batch_size = self.cfg.batch_size if split == "train" else self.cfg.eval_batch_size
        pad_id = self.text_tokenizer.pad_token_id if self.text_tokenizer is not None else 0
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

    # ---- exact resume (Lightning saves/restores this with every checkpoint) ----

    def state_dict(self) -> dict:
        """Training batches consumed and each rank's RNG states (gathered: every rank calls this on save)."""
        states = [rng_states()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, rng_states())
        return {"train_batches": self.train_batches, "rng": states}

    def load_state_dict(self, state: dict) -> None:
        self.train_batches = int(state["train_batches"])
        states = state.get("rng") or []
        if len(states) == self.world_size:
            self._pending_rng = states[self.rank]
        else:
            log.warning("data: checkpoint has RNG states of %d ranks, this run has %d: RNG not restored (data "
                        "position is)", len(states), self.world_size)  # fmt: skip

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if self.trainer is not None and self.trainer.training:
            self.train_batches += 1
            if self._pending_rng is not None:
                set_rng_states(self._pending_rng)
                self._pending_rng = None
        return batch
