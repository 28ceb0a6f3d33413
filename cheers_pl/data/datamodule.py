"""`CheersDataModule`: streams WebDataset shards into typed `Batch`es of the three-task mixture.

Training streams are resampled and infinite (an epoch is whatever `max_steps` says); validation and test streams
are finite and partitioned exactly across ranks and DataLoader workers. Bad samples are skipped, logged and counted
(`Batch.events`), never fatal.

Exact resume: the DataModule's checkpoint state holds the number of training batches consumed, each worker's
stream position (`cheers_pl.data.resumable.Cursor`, carried to the main process by every batch) and every rank's RNG
states (torch, CUDA, numpy, python) at save time. On resume each worker stream seeks to its cursor without opening
consumed shards or decoding consumed images, the workers are renumbered so that the DataLoader's round-robin picks
up with the worker whose batch is next, and the RNG states are restored just before the first training batch, after
the DataLoader has drawn its worker seeds, so flow times, noise and guidance dropout continue as in the uninterrupted
run. The position needs the same number of ranks and workers; with another layout the streams start afresh (warned).

A stream in which `data.max_consecutive_skips` samples in a row are skipped (every sample too long, undecodable,
...) raises a `ValueError` with the skip counts instead of looping forever. Under several ranks, the validation and
test loaders stop on every rank as soon as one rank's share is exhausted (`EvenBatches`): uneven shards would
otherwise leave the longer ranks waiting in a collective (`sync_dist`, FSDP's all-gathers) for a batch that never
comes; what the longer ranks leave out is counted and logged.
"""

import functools
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from cheers_pl.data.batch import Batch, collate
from cheers_pl.data.processing import ProcessingConfig, SequenceBuilder
from cheers_pl.data.streams import EvenBatches, ExampleStream
from cheers_pl.data.synthetic import SyntheticConfig
from cheers_pl.data.tasks import ExampleFactory, TaskWeights
from cheers_pl.data.text_tokenizer import load_text_tokenizer
from cheers_pl.data.webdataset import resolve_shards

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
    shuffle_buffer: int = 500  # training: samples per shuffle window
    max_seq_len: int = 128  # longer examples are skipped and counted (skip/too_long)
    # understanding rows: up to this many of an image's questions (its caption request included), each its own
    # segment after one shared image prefix (`SequenceBuilder.understanding_packed`: every answer sees only the image
    # and its own question); 1 = one question drawn per image, the plain chat sequence
    qa_per_example: int = 1
    pack_caption: bool = False  # packed rows always hold the caption request (the densest answer) among their questions
    max_consecutive_skips: int = 1000  # a stream skipping this many samples in a row is an error, not an endless loop
    task_weights: TaskWeights = field(default_factory=TaskWeights)
    # chat template, label rule and image padding (native by default; the released ones: system_prompt="You are a
    # helpful assistant.", label_rule=official, pad_fill=black)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    seed: int = 0
    # `make-shards` (synthetic world)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    num_samples: dict[str, int] = field(default_factory=lambda: {"train": 20000, "val": 512, "test": 512})
    samples_per_shard: int = 1000
    text_tokenizer_vocab_size: int = 1024

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "num_image_tokens",
            "batch_size",
            "eval_batch_size",
            "max_seq_len",
            "max_consecutive_skips",
            "qa_per_example",
        ):
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


class CheersDataModule(L.LightningDataModule):
    """Streams the configured shards; rank and world size come from the attached Trainer unless given."""

    def __init__(self, cfg: DataConfig, rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._rank, self._world_size = rank, world_size
        self.text_tokenizer = None
        self.train_batches = 0  # training batches handed to the model so far (resume position)
        self.cursors: dict[int, tuple[int, ...]] = {}  # logical worker -> its Cursor after its last consumed batch
        self._resume: dict[int, tuple[int, ...]] = {}
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
        builder = SequenceBuilder(self.text_tokenizer, self.cfg.num_image_tokens, self.cfg.processing)
        return ExampleFactory(
            builder,
            self.cfg.image_size,
            self.cfg.task_weights,
            self.cfg.max_seq_len,
            self.cfg.qa_per_example,
            self.cfg.pack_caption,
        )

    def dataset(self, split: str) -> ExampleStream:
        """The `Example` stream of a split for this rank (training is resampled and infinite)."""
        train = split == "train"
        urls = resolve_shards(self.cfg.shards(split))
        if train and len(urls) < self.world_size:
            log.warning("data: %d training shards for %d ranks: every rank draws from all of them (independent "
                        "seeds, so ranks see overlapping samples)", len(urls), self.world_size)  # fmt: skip
        return ExampleStream(
            urls,
            self.factory(),
            rank=self.rank,
            world_size=self.world_size,
            resampled=train,
            shuffle_buffer=self.cfg.shuffle_buffer if train else 0,
            seed=self.cfg.seed,
            resume=self._resume if train else None,
            worker_offset=self.train_batches % max(1, self.cfg.num_workers) if train else 0,
            max_consecutive_skips=self.cfg.max_consecutive_skips,
        )

    def _loader(self, split: str) -> DataLoader | EvenBatches:
        batch_size = self.cfg.batch_size if split == "train" else self.cfg.eval_batch_size
        pad_id = self.text_tokenizer.pad_token_id if self.text_tokenizer is not None else 0
        loader = DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            num_workers=self.cfg.num_workers,
            collate_fn=functools.partial(collate, pad_id=pad_id),
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            # each new iterator draws a base seed; from the global RNG it would shift training's flow times and noise
            # after every validation (and a run that validated at a step would not resume like one that did not)
            generator=None if split == "train" else torch.Generator().manual_seed(self.cfg.seed),
        )
        if split == "train" or self.trainer is None or self.trainer.world_size == 1:
            return loader
        return EvenBatches(loader, functools.partial(self.trainer.strategy.reduce_boolean_decision, all=True), split,
                           self.rank)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | EvenBatches:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | EvenBatches:
        return self._loader("test")

    # ---- exact resume (Lightning saves/restores this with every checkpoint) ----

    def state_dict(self) -> dict:
        """Batches consumed, each rank's worker cursors and RNG states (gathered: every rank calls this on save)."""
        mine = {"rng": rng_states(), "cursors": dict(self.cursors)}
        ranks = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        return {
            "train_batches": self.train_batches,
            "num_workers": self.cfg.num_workers,
            "rng": [r["rng"] for r in ranks],
            "cursors": [r["cursors"] for r in ranks],
        }

    def load_state_dict(self, state: dict) -> None:
        self.train_batches = int(state["train_batches"])
        states, cursors = state.get("rng") or [], state.get("cursors")
        layout = (len(states), state.get("num_workers"))
        if cursors is None or layout != (self.world_size, self.cfg.num_workers):
            log.warning("data: the checkpoint's data position is for %s ranks x %s workers (or an earlier release), "
                        "this run has %d x %d: the streams start afresh and the RNG is not restored", *layout,
                        self.world_size, self.cfg.num_workers)  # fmt: skip
            self.train_batches = 0
            return
        self._resume = dict(cursors[self.rank])
        self.cursors = dict(self._resume)
        self._pending_rng = states[self.rank]

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if self.trainer is not None and self.trainer.training:
            self.train_batches += 1
            if batch.cursor is not None:
                self.cursors[batch.cursor[0]] = tuple(batch.cursor[1:])
            if self._pending_rng is not None:
                set_rng_states(self._pending_rng)
                self._pending_rng = None
        return batch
