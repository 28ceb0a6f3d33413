"""Validation leaves the training RNG as it found it (cheers_pl/callbacks/rng.py) (R11)."""

import random
from types import SimpleNamespace

import numpy as np
import torch

from cheers_pl.callbacks.rng import RNGIsolation


def _draw() -> tuple:
    return float(torch.rand(1)), float(np.random.rand()), random.random()


def test_validation_draws_do_not_reach_training() -> None:
    trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"))
    guard = RNGIsolation()
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    guard.on_validation_start(trainer, None)
    _draw()  # what validation and its callbacks consume
    guard.on_validation_end(trainer, None)
    after = _draw()
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    assert after == _draw()
