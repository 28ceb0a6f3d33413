"""EMA of the weights through Lightning's `EMAWeightAveraging` (validation and the final checkpoint use the average).

Under FSDP the averaged copy is not sharded (Lightning's `WeightAveraging` warns and keeps a full copy), so EMA at
full size belongs on DDP runs or on a single device with enough memory.
"""

from dataclasses import dataclass

from lightning.pytorch.callbacks import EMAWeightAveraging


@dataclass
class EMAConfig:
    """Decay and update schedule of the EMA."""

    decay: float = 0.999
    update_every_n_steps: int = 1
    update_starting_at_step: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in (0, 1), got {self.decay}")


class EMACallback(EMAWeightAveraging):
    """`EMAWeightAveraging` built from `EMAConfig`."""

    def __init__(self, cfg: EMAConfig) -> None:
        super().__init__(
            decay=cfg.decay,
            update_every_n_steps=cfg.update_every_n_steps,
            update_starting_at_step=cfg.update_starting_at_step,
        )
