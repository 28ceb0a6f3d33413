"""Per-rank streams (cheers_pl/data/streams.py): evaluation batches that end on every rank together (R11)."""

import functools
import threading

from cheers_pl.data.streams import EvenBatches


def test_even_batches_stop_every_rank_when_the_shortest_share_ends() -> None:
    """Two ranks (threads) with 5 and 3 batches: both stop after 3, the longer one counts what it left out."""
    barrier, votes = threading.Barrier(2), [True, True]

    def has_more(rank: int, local: bool) -> bool:  # an all-reduce of the two ranks' decisions
        votes[rank] = local
        barrier.wait()
        decision = all(votes)
        barrier.wait()
        return decision

    loaders = [[[0] * 4] * 5, [[0] * 4] * 3]
    evens = [EvenBatches(loaders[r], functools.partial(has_more, r), "val", r) for r in range(2)]  # type: ignore[arg-type]
    counts = [0, 0]

    def run(rank: int) -> None:
        counts[rank] = sum(1 for _ in evens[rank])

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert counts == [3, 3] and evens[0].left_out == 8 and evens[1].left_out == 0
