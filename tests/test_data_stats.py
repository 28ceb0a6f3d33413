"""data-stats command (cheers_pl/data_stats.py)."""

from pathlib import Path

import pytest

from cheers_pl.config import compose
from cheers_pl.data_stats import DataStatsArgs, run


def test_counts_tasks_of_the_requested_number_of_samples(shard_dir: Path) -> None:
    cfg = compose("tiny_data", [f"data.shard_dir={shard_dir}", "data.num_workers=0", "data.batch_size=16"])
    out = run(cfg, DataStatsArgs(num_samples=64))
    tasks = {k: v for k, v in out["counts"].items() if k.startswith("task/")}
    assert out["samples"] == 64 and sum(tasks.values()) == 64
    assert out["samples_per_s_after_first_batch"] > 0


def test_bad_split_is_an_error(shard_dir: Path) -> None:
    cfg = compose("tiny_data", [f"data.shard_dir={shard_dir}"])
    with pytest.raises(ValueError, match="split"):
        run(cfg, DataStatsArgs(split="training"))
