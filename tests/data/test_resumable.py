"""Resumable training streams: a cursor restores the exact position without opening consumed shards (R11)."""

import itertools
from pathlib import Path

import pytest
import webdataset as wds

from cheers_pl.data import resumable
from cheers_pl.data.resumable import Cursor, own_shards, windows
from cheers_pl.data.webdataset import EventCounter, resolve_shards, write_shard


def _stream(urls: list[str], start: Cursor | None = None, window: int = 25):
    return windows(urls, EventCounter(), seed=3, rank=0, worker=1, window=window, start=start)


def _items(stream, n: int) -> list[tuple[Cursor, str, float]]:
    return [(c, raw["__key__"], rng.random()) for c, raw, rng in itertools.islice(stream, n)]


def _opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = wds.tariterators.tarfile_samples

    def spy(src, handler=None):
        src = list(src)
        opened.extend(s["url"] for s in src)
        return real(iter(src), handler=handler)

    monkeypatch.setattr(resumable.wds.tariterators, "tarfile_samples", spy)
    return opened


def test_a_stream_resumed_at_any_cursor_continues_exactly(shard_dir: Path) -> None:
    urls = resolve_shards(str(shard_dir / "train-*.tar"))
    full = _items(_stream(urls), 400)  # 16 windows over ≈ 10 shard draws: resampled past the 240 samples
    assert len({key for _, key, _ in full}) < 400  # resampled with replacement
    for k in (0, 24, 25, 137, 399 - 50):
        resumed = _items(_stream(urls, full[k][0]), 50)
        assert resumed == full[k + 1 : k + 51], f"differs after item {k}"


def test_resuming_opens_no_consumed_shard(shard_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = resolve_shards(str(shard_dir / "train-*.tar"))
    opened = _opened(monkeypatch)
    full = _items(_stream(urls, window=10), 300)
    draws_to_here = len(opened)
    cursor = full[250][0]
    opened.clear()
    _items(_stream(urls, cursor, window=10), 5)
    # the window of item 250 starts in draw `cursor.draw`; resuming reads that shard and at most one more
    assert cursor.draw >= 5 and draws_to_here > cursor.draw and len(opened) <= 2


def test_window_is_a_permutation_of_consecutive_samples(shard_dir: Path) -> None:
    urls = resolve_shards(str(shard_dir / "train-*.tar"))[:1]
    items = _items(_stream(urls, window=40), 80)  # one shard of 40 drawn twice: two windows, each the whole shard
    first, second = [k for _, k, _ in items[:40]], [k for _, k, _ in items[40:]]
    assert sorted(first) == sorted(second) == [f"train_{i:08d}" for i in range(40)]
    assert first != sorted(first) and first != second
    assert [c.window for c, _, _ in items] == [0] * 40 + [1] * 40


def test_shards_without_samples_raise_instead_of_looping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_shard([], tmp_path / "empty-000000.tar")
    monkeypatch.setattr(resumable, "MAX_EMPTY_DRAWS", 5)
    with pytest.raises(ValueError, match=r"5 drawn shards in a row hold no readable sample"):
        next(_stream([str(tmp_path / "empty-000000.tar")]))


def test_fewer_shards_than_ranks_means_every_rank_draws_from_all() -> None:
    assert own_shards(["a", "b", "c"], rank=1, world_size=2) == ["b"]
    assert own_shards(["a"], rank=1, world_size=2) == ["a"]
