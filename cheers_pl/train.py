"""`train.run(cfg) -> dict`: builds the stage, data and callbacks of an experiment and fits it (R12, R13).

The run directory is `<output_root>/<name>`: `config.yaml` (resolved config), `checkpoints/last.ckpt` (written every
`checkpoint.every_n_steps` steps or `checkpoint.every_n_minutes` minutes, on SIGTERM and at the end; atomically, and
overwritten in place when the directory is reused), and TensorBoard logs under `tb/`. `resume_from` is checked
before Lightning reads it (a safe load that maps the file without reading its tensors): Lightning's FSDP strategy
loads a full checkpoint with its own unpickler, which ignores `weights_only`.
"""

import atexit
import logging
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf

from cheers_pl.callbacks import build_callbacks
from cheers_pl.callbacks.checkpointing import SigtermCheckpoint, checkpoint_callbacks
from cheers_pl.callbacks.data_events import DataEventsCallback
from cheers_pl.callbacks.nonfinite import NonFiniteGuard
from cheers_pl.callbacks.rng import RNGIsolation
from cheers_pl.checkpoint import AtomicCheckpointIO, check_stage_checkpoint, read_checkpoint, saved_config
from cheers_pl.config import ExperimentConfig, save_config
from cheers_pl.data.datamodule import CheersDataModule
from cheers_pl.process import end_process_group
from cheers_pl.stage import build_stage
from cheers_pl.strategies import trainer_kwargs

log = logging.getLogger(__name__)


def build_trainer(cfg: ExperimentConfig, extra_callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """The Trainer of a run: logger, `last.ckpt` writers, LR monitor, data-event counters, NaN guard, RNG isolation."""
    run_dir = cfg.run_dir
    callbacks = [
        *checkpoint_callbacks(cfg.checkpoint, run_dir / "checkpoints"),
        *([NonFiniteGuard(cfg.nonfinite)] if cfg.nonfinite.skip_steps else []),
        LearningRateMonitor(logging_interval="step"),
        DataEventsCallback(),
        RNGIsolation(),
        *build_callbacks(cfg.callbacks),
        *(extra_callbacks or []),
    ]
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="")
    # the resolved config as hyperparameters (TensorBoard's HPARAMS tab; nested keys flattened to model/llm/dim, ...)
    logger.log_hyperparams(OmegaConf.to_container(OmegaConf.structured(cfg)))
    kwargs = trainer_kwargs(cfg.trainer.kwargs())
    plugins = [*kwargs.pop("plugins", []), AtomicCheckpointIO()]
    return L.Trainer(default_root_dir=str(run_dir), logger=logger, callbacks=callbacks, plugins=plugins, **kwargs)


def check_resume(cfg: ExperimentConfig) -> None:
    """Raises a `ValueError` naming `resume_from` unless it is a safe, whole training checkpoint of this stage."""
    assert cfg.resume_from is not None
    ckpt = read_checkpoint(cfg.resume_from, "resume_from", mmap=True)
    check_stage_checkpoint(ckpt, cfg.resume_from, "resume_from")
    stage = (saved_config(ckpt, cfg.resume_from).get("stage") or {}).get("name")
    if stage != cfg.stage.name:
        raise ValueError(f"resume_from={cfg.resume_from!r}: a checkpoint of stage {stage!r}, not {cfg.stage.name!r}")


def run(cfg: ExperimentConfig) -> dict:
    """Trains the experiment's stage; returns the run directory, the last checkpoint and the final metrics."""
    if cfg.stage is None:
        raise ValueError(f"experiment {cfg.name!r} has no stage; pick one with stage=<option>")
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    if cfg.resume_from:
        check_resume(cfg)
    elif last.exists():
        warnings.warn(f"{last} is from an earlier run and is overwritten by this one; to continue that run, pass "
                      f"resume_from={last}", stacklevel=2)  # fmt: skip
    L.seed_everything(cfg.seed, workers=True)
    save_config(cfg, cfg.run_dir)
    module = build_stage(cfg)
    datamodule = CheersDataModule(cfg.data)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.resume_from, weights_only=True)
    io = trainer.strategy.checkpoint_io
    written = trainer.strategy.broadcast(io.last_written if isinstance(io, AtomicCheckpointIO) else None)
    if written is None or Path(written[0]).resolve() != last.resolve() or written[1] != trainer.global_step:
        trainer.save_checkpoint(last)  # unless `ModelCheckpoint` wrote this very step already (a write is costly)
    error = trainer.strategy.broadcast(io.last_error if isinstance(io, AtomicCheckpointIO) else None)
    if error:
        raise OSError(f"training finished at step {trainer.global_step} but the final {error}")
    metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.world_size > 1:
        atexit.unregister(end_process_group)
        atexit.register(end_process_group)
    sigterm = next((c for c in trainer.callbacks if isinstance(c, SigtermCheckpoint) and c.requested), None)
    stopped = {"stopped_by": "SIGTERM"} if sigterm is not None else {}
    return {"run_dir": str(cfg.run_dir), "checkpoint": str(last), "global_step": trainer.global_step, **stopped,
            **metrics}  # fmt: skip
