"""Resumable training streams: shards drawn with replacement, shuffled in windows, positioned by a four-int cursor.

One (rank, worker) stream is a pure function of the seed. Draw j picks shard `own[rng.integers(len(own))]` of
`np.random.default_rng([seed, rank, worker])`; the samples of the drawn shards, in order, are cut into windows of
`window` samples; window w is emitted in the order of `random.Random(f"{seed}/{rank}/{worker}/window/{w}")`, and
its k-th emitted sample draws its task from `random.Random(f"{seed}/{rank}/{worker}/{w}/{k}")`.

A position is therefore `Cursor(window, draw, offset, emitted)`: window w starts at sample `offset` of draw `draw`
and `emitted` of its samples are consumed. Resuming there draws `draw` shard indices (integers, no I/O), reads the
start shard from `offset` (the bytes of at most one shard are read to get there) and one window of raw samples, and
drops the consumed ones undecoded: consumed shards are never opened and no consumed image is decoded or tokenised.
(webdataset's rolling `shuffle` buffer holds samples from every earlier shard, so its state can only be rebuilt by
replaying the whole stream; a window shuffle mixes as many samples, drawn from `window / samples_per_shard` shards.)
"""

import random
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import webdataset as wds

from cheers_pl.data.webdataset import EventCounter

MAX_EMPTY_DRAWS = 200  # consecutive drawn shards without one readable sample: the shards are empty or unreadable


class Cursor(NamedTuple):
    """Where a stream resumes: window index, the draw and sample offset where the window starts, samples consumed."""

    window: int
    draw: int
    offset: int
    emitted: int


def own_shards(urls: list[str], rank: int, world_size: int) -> list[str]:
    """The shards a rank draws from: its own every-`world_size`-th one, or all of them when there are fewer."""
    return urls[rank::world_size] if len(urls) >= world_size else urls


def _draws(own: list[str], seed: int, rank: int, worker: int) -> Iterator[str]:
    rng = np.random.default_rng([seed, rank, worker])
    while True:
        yield own[int(rng.integers(len(own)))]


def source(
    own: list[str], counter: EventCounter, *, seed: int, rank: int, worker: int, draw: int = 0, offset: int = 0
) -> Iterator[tuple[int, int, dict]]:
    """`(draw, offset, raw sample)` in stream order, from sample `offset` of draw `draw` on.

    Raises:
        ValueError: after `MAX_EMPTY_DRAWS` drawn shards in a row without a readable sample (instead of looping).
    """
    empty = 0
    for j, url in enumerate(_draws(own, seed, rank, worker)):
        if j < draw:
            continue
        found = 0
        for i, raw in enumerate(wds.tariterators.tarfile_samples([{"url": url}], handler=counter.tar_handler)):
            found += 1
            if j > draw or i >= offset:
                yield j, i, raw
        empty = empty + 1 if found == 0 else 0
        if empty >= MAX_EMPTY_DRAWS:
            raise ValueError(
                f"data: rank {rank} worker {worker}: {empty} drawn shards in a row hold no readable sample "
                f"(shards {own[:3]}{' ...' if len(own) > 3 else ''}); skip counts {dict(counter.total)}"
            )


def windows(
    own: list[str],
    counter: EventCounter,
    *,
    seed: int,
    rank: int,
    worker: int,
    window: int,
    start: Cursor | None = None,
) -> Iterator[tuple[Cursor, dict, random.Random]]:
    """`(cursor after this sample, raw sample, its task RNG)` forever, resuming after `start` when given."""
    w, draw, offset, skip = start if start is not None else Cursor(0, 0, 0, 0)
    stream = source(own, counter, seed=seed, rank=rank, worker=worker, draw=draw, offset=offset)
    pending = next(stream)
    while True:
        begin = pending[:2]
        buffer = [pending[2]]
        for item in stream:
            if len(buffer) == window:
                pending = item
                break
            buffer.append(item[2])
        order = list(range(len(buffer)))
        random.Random(f"{seed}/{rank}/{worker}/window/{w}").shuffle(order)
        for k in range(skip, len(order)):
            yield Cursor(w, *begin, k + 1), buffer[order[k]], random.Random(f"{seed}/{rank}/{worker}/{w}/{k}")
        w, skip = w + 1, 0
