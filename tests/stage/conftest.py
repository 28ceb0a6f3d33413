"""Fixtures for stage tests: tiny experiment configs pointed at the session's small shards."""

from pathlib import Path

import pytest

from cheers_pl.config import ExperimentConfig, compose


@pytest.fixture
def make_cfg(shard_dir: Path, tmp_path: Path):
    def make(experiment: str, *overrides: str) -> ExperimentConfig:
        base = [f"data.shard_dir={shard_dir}", "data.num_workers=0", "data.batch_size=8", "data.eval_batch_size=8"]
        base += ["stage.init_from=null", f"output_root={tmp_path / 'runs'}"]
        return compose(experiment, [*base, *overrides])

    return make
