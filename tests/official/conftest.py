"""A tiny released-layout checkpoint written once per module, and its conversion."""

from pathlib import Path

import pytest

from cheers_pl.official.conversion import convert
from tests._official import random_official_state, write_official_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"


@pytest.fixture(scope="module")
def official_state() -> dict:
    return random_official_state()


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory: pytest.TempPathFactory, official_state: dict) -> Path:
    return write_official_checkpoint(tmp_path_factory.mktemp("official") / "src", official_state)


@pytest.fixture(scope="module")
def converted(official_dir: Path) -> tuple:
    return convert(official_dir)
