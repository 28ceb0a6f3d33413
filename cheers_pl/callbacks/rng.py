"""Validation leaves the training RNG as it found it, so a run's training numbers never depend on when it validated.

Validation inside `fit` draws from the global generators (torch, CUDA, numpy, python) between two training steps.
Then a run that validates at a step the uninterrupted run does not (Lightning validates when `should_stop` is set,
e.g. on SIGTERM) would continue with other flow times, noise and guidance dropout after resuming. `RNGIsolation`
saves every generator when validation starts and restores them when it ends.
"""

import lightning as L

from cheers_pl.data.datamodule import rng_states, set_rng_states


class RNGIsolation(L.Callback):
    """Saves the global RNG states at `on_validation_start` and restores them at `on_validation_end`."""

    def __init__(self) -> None:
        self._saved: dict | None = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved = rng_states() if trainer.state.fn == "fit" else None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved is not None:
            set_rng_states(self._saved)
            self._saved = None
