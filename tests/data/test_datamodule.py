"""Streaming DataModule: partitioning, task mixture, bad samples, batching (cheers_pl/data/datamodule.py)."""

import io
import itertools
import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from PIL import Image

from cheers_pl.data.batch import Batch
from cheers_pl.data.datamodule import CheersDataModule, DataConfig, ExampleStream
from cheers_pl.data.synthetic import SyntheticConfig, make_sample
from cheers_pl.data.tasks import TASK_GENERATION, TASK_TEXT, TASK_UNDERSTANDING, TaskWeights
from cheers_pl.data.webdataset import EventCounter, write_shard


def _cfg(shard_dir: Path, **kw) -> DataConfig:
    return DataConfig(**{"shard_dir": str(shard_dir), "num_workers": 0, "batch_size": 16, "eval_batch_size": 16, **kw})


def _keys_of(dm: CheersDataModule, split: str, num_workers: int) -> list[str]:
    dm.cfg.num_workers = num_workers
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    return [k for batch in loader for k in batch.keys]


@pytest.mark.parametrize("split", ["val", "test"])
def test_two_ranks_two_workers_disjoint_and_complete(shard_dir: Path, split: str) -> None:
    seen = []
    for rank in range(2):
        dm = CheersDataModule(_cfg(shard_dir), rank=rank, world_size=2)
        seen.append(_keys_of(dm, split, num_workers=2))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"{split}_{i:08d}" for i in range(64))


def test_sample_level_partition_when_fewer_shards_than_slots(tmp_path: Path, shard_dir: Path) -> None:
    write_shard([make_sample(i, "val", SyntheticConfig()) for i in range(10)], tmp_path / "val-000000.tar")
    cfg = _cfg(tmp_path, text_tokenizer=str(shard_dir / "tokenizer"))
    seen = [_keys_of(CheersDataModule(cfg, rank=r, world_size=2), "val", num_workers=2) for r in range(2)]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 10


def test_training_stream_is_infinite_and_ranks_differ(shard_dir: Path) -> None:
    firsts = []
    for rank in range(2):
        dm = CheersDataModule(_cfg(shard_dir, shuffle_buffer=10), rank=rank, world_size=2)
        batches = iter(dm.train_dataloader())
        keys = [k for _ in range(20) for k in next(batches).keys]  # 320 > 240 training samples: resampled
        assert len(keys) == 320
        firsts.append(set(keys))
    train_shards = sorted(p.name for p in shard_dir.glob("train-*.tar"))
    assert len(train_shards) == 6
    # each rank reads only its own shards: shard k holds samples 40k .. 40k+39
    shard_of = [{int(k.split("_")[1]) // 40 for k in keys} for keys in firsts]
    assert not shard_of[0] & shard_of[1]


def test_task_mixture_matches_weights(shard_dir: Path) -> None:
    dm = CheersDataModule(_cfg(shard_dir, task_weights=TaskWeights(3, 6, 1), shuffle_buffer=0))
    stream = dm.dataset("train")
    counts: Counter[int] = Counter()
    for i, example in enumerate(stream):
        counts[example.task] += 1
        if i == 1999:
            break
    n = sum(counts.values())
    for task, p in ((TASK_UNDERSTANDING, 0.3), (TASK_GENERATION, 0.6), (TASK_TEXT, 0.1)):
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(counts[task] / n - p) < 4 * sigma, (task, counts)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bad_shard(path: Path) -> None:
    """One good sample per kind of bad sample, and one converted sample per image mode."""
    import webdataset as wds

    good = make_sample(0, "val", SyntheticConfig())
    meta = json.dumps(good["json"]).encode()
    img = good["image"]
    rows = [
        ("good", {"png": _png(img), "txt": b"a caption", "json": meta}),
        ("gray", {"png": _png(img[..., 0]), "txt": b"a caption", "json": meta}),
        ("rgba", {"png": _png(np.dstack([img, np.full(img.shape[:2], 128, np.uint8)])), "txt": b"c", "json": meta}),
        ("sixteen", {"png": _png(img[..., 0].astype(np.uint16) * 257), "txt": b"c", "json": meta}),
        ("corrupt", {"png": b"\x89PNG garbage", "txt": b"a caption", "json": meta}),
        ("zero", {"png": b"", "txt": b"a caption", "json": meta}),
        ("nocaption", {"png": _png(img), "json": meta}),
        ("nometa", {"png": _png(img), "txt": b"a caption"}),
        ("badjson", {"png": _png(img), "txt": b"a caption", "json": b"{not json"}),
        ("noimage", {"txt": b"a caption", "json": meta}),
        ("last", {"png": _png(img), "txt": b"a caption", "json": meta}),  # carries the counts of the skips above
    ]
    with wds.TarWriter(str(path)) as sink:
        for key, fields in rows:
            sink.write({"__key__": key, **fields})


def test_bad_samples_are_converted_or_skipped_and_counted(tmp_path: Path, shard_dir: Path) -> None:
    _bad_shard(tmp_path / "val-000000.tar")
    cfg = _cfg(tmp_path, text_tokenizer=str(shard_dir / "tokenizer"), task_weights=TaskWeights(1, 0, 0))
    dm = CheersDataModule(cfg)
    batches = list(dm.val_dataloader())
    keys = sorted(k for b in batches for k in b.keys)
    assert keys == ["good", "gray", "last", "rgba", "sixteen"]
    events: Counter[str] = Counter()
    for b in batches:
        events.update(b.events)
    assert events["skip/undecodable_image"] == 1
    assert events["skip/zero_byte_image"] == 1
    assert events["skip/missing_caption"] == 1
    assert events["skip/missing_metadata"] == 1
    assert events["skip/bad_text_or_metadata"] == 1
    assert events["skip/missing_image"] == 1
    assert events["convert/L"] == 1 and events["convert/RGBA"] == 1
    assert sum(v for k, v in events.items() if k.startswith("convert/I")) == 1


def test_skips_are_counted_even_when_trailing(tmp_path: Path, shard_dir: Path) -> None:
    """Skips after the last good example of a finite stream stay in the stream's totals (and are logged)."""
    _bad_shard(tmp_path / "val-000000.tar")
    cfg = _cfg(tmp_path, text_tokenizer=str(shard_dir / "tokenizer"), task_weights=TaskWeights(1, 0, 0))
    stream = CheersDataModule(cfg).dataset("val")
    list(stream)
    assert sum(v for k, v in stream.counter.total.items() if k.startswith("skip/")) == 6


def test_batch_fields_and_device_move(shard_dir: Path) -> None:
    dm = CheersDataModule(_cfg(shard_dir))
    batch = next(iter(dm.val_dataloader()))
    assert isinstance(batch, Batch)
    b, length = batch.input_ids.shape
    assert batch.images.shape == (b, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.labels.shape == batch.pad_mask.shape == batch.block_ids.shape == (b, length)
    assert bool(batch.pad_mask[:, -1].all())  # left padding: every row ends with a real token
    for row in range(b):
        n_image = int(batch.block_ids[row].sum())
        assert n_image in (0, 16)
        assert (n_image == 0) == (int(batch.task[row]) == TASK_TEXT)
    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, Batch) and moved.input_ids.device.type == "meta" and moved.keys == batch.keys


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="data.batch_size"):
        DataConfig(batch_size=0)
    with pytest.raises(ValueError, match="data.num_samples"):
        DataConfig(num_samples={"training": 3})
    with pytest.raises(ValueError, match="task_weights"):
        TaskWeights(0, 0, 0)


def test_task_rng_is_stable_across_processes() -> None:
    assert random.Random("0/0/0/tasks").random() == random.Random("0/0/0/tasks").random()
    stream = ExampleStream([], None, rank=0, world_size=1, resampled=False, shuffle_buffer=0, seed=0)  # type: ignore[arg-type]
    assert isinstance(stream.counter, EventCounter)


def _consume(dm: CheersDataModule, n: int) -> list[list[str]]:
    """Keys of the first `n` training batches, bookkept as Lightning hands them to the model."""
    batches = iter(dm.train_dataloader())
    out = []
    for _ in range(n):
        out.append(list(dm.on_before_batch_transfer(next(batches), 0).keys))
    return out


def _training(dm: CheersDataModule) -> CheersDataModule:
    dm.trainer = SimpleNamespace(training=True, world_size=1, global_rank=0)  # what the DataModule reads of it
    return dm


def test_resume_continues_the_exact_batches_with_two_workers(shard_dir: Path) -> None:
    """3 batches consumed (odd, so the next batch is worker 1's) then saved: the resumed loader continues exactly."""
    cfg = _cfg(shard_dir, num_workers=2, batch_size=4, shuffle_buffer=20)
    full = _consume(_training(CheersDataModule(cfg)), 8)
    first = _training(CheersDataModule(cfg))
    assert _consume(first, 3) == full[:3]
    state = first.state_dict()
    assert state["train_batches"] == 3 and sorted(state["cursors"][0]) == [0, 1]
    resumed = _training(CheersDataModule(cfg))
    resumed.load_state_dict(state)
    assert _consume(resumed, 5) == full[3:]


def test_resume_decodes_no_consumed_image(shard_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cheers_pl.data import tasks

    decoded = []
    real = tasks.decode_image
    monkeypatch.setattr(tasks, "decode_image", lambda data: decoded.append(1) or real(data))
    cfg = _cfg(shard_dir, batch_size=4, shuffle_buffer=20, task_weights=TaskWeights(1, 1, 0))
    dm = _training(CheersDataModule(cfg))
    _consume(dm, 30)  # 120 examples
    assert len(decoded) == 120
    resumed = _training(CheersDataModule(cfg))
    resumed.load_state_dict(dm.state_dict())
    decoded.clear()
    _consume(resumed, 1)
    assert len(decoded) == 4  # the 4 examples of the next batch, none of the 120 consumed


def test_other_layout_on_resume_starts_afresh_and_says_so(shard_dir: Path, caplog) -> None:
    dm = _training(CheersDataModule(_cfg(shard_dir, batch_size=4)))
    _consume(dm, 2)
    other = CheersDataModule(_cfg(shard_dir, batch_size=4, num_workers=2))
    other.load_state_dict(dm.state_dict())
    assert other.train_batches == 0 and "start afresh" in caplog.text


def test_samples_longer_than_max_seq_len_are_skipped_and_counted(shard_dir: Path) -> None:
    dm = CheersDataModule(_cfg(shard_dir, max_seq_len=48, task_weights=TaskWeights(1, 1, 0)))
    examples = list(itertools.islice(dm.dataset("train"), 100))
    events: Counter[str] = Counter()
    for e in examples:
        events.update(e.events)
    assert events["skip/too_long"] > 0 and all(len(e.sequence) <= 48 for e in examples)


def test_a_stream_where_every_sample_is_skipped_raises(shard_dir: Path) -> None:
    dm = CheersDataModule(_cfg(shard_dir, max_seq_len=4, max_consecutive_skips=50))
    with pytest.raises(ValueError, match=r"the last 50 samples were all skipped \({'too_long': 50}"):
        next(iter(dm.dataset("train")))


def test_fewer_training_shards_than_ranks_warns_and_both_ranks_read(tmp_path: Path, shard_dir: Path, caplog) -> None:
    write_shard([make_sample(i, "train", SyntheticConfig()) for i in range(8)], tmp_path / "train-000000.tar")
    cfg = _cfg(tmp_path, text_tokenizer=str(shard_dir / "tokenizer"), num_workers=2, batch_size=4)
    keys = [set(_keys_of_train(CheersDataModule(cfg, rank=r, world_size=2))) for r in range(2)]
    assert keys[0] and keys[1] and "1 training shards for 2 ranks" in caplog.text


def _keys_of_train(dm: CheersDataModule) -> list[str]:
    batches = iter(dm.train_dataloader())
    return [k for _ in range(4) for k in next(batches).keys]


def test_shard_spec_matching_nothing_names_the_spec(tmp_path: Path) -> None:
    dm = CheersDataModule(_cfg(tmp_path, train_shards=str(tmp_path / "nope-*.tar")))
    with pytest.raises(ValueError, match=r"shard spec '.*nope-\*.tar' matches no files"):
        dm.train_dataloader()


def test_iterating_the_validation_loader_draws_nothing_from_the_global_rng(shard_dir: Path) -> None:
    """Each new DataLoader iterator draws a base seed; the evaluation loaders draw it from their own generator."""
    loader = CheersDataModule(_cfg(shard_dir)).val_dataloader()
    state = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), state)
