"""Fixtures for the benchmark tests: tiny experiment configs pointed at the session's small shards."""

from pathlib import Path

import pytest
import torch

from cheers_pl.bench.build import experiment_config
from cheers_pl.config import ExperimentConfig


@pytest.fixture
def shard_overrides(shard_dir: Path) -> list[str]:
    return [f"data.shard_dir={shard_dir}", "data.batch_size=4"]


@pytest.fixture
def tiny_cfg(shard_overrides: list[str]) -> ExperimentConfig:
    return experiment_config("tiny", "generation", shard_overrides)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the test machine's cores are shared, and spinning OpenMP threads stall under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
