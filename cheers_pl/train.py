"""`train.run(cfg) -> dict`: builds the stage, data and callbacks of an experiment and fits it (R12, R13).

The run directory is `<output_root>/<name>`: `config.yaml` (resolved config), `checkpoints/` (`last.ckpt` carries
the config too), and TensorBoard logs under `tb/`.
"""

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from cheers_pl.callbacks import build_callbacks
from cheers_pl.callbacks.data_events import DataEventsCallback
from cheers_pl.config import ExperimentConfig, save_config
from cheers_pl.data.datamodule import CheersDataModule
from cheers_pl.stage import build_stage
from cheers_pl.strategies import trainer_kwargs

log = logging.getLogger(__name__)


def build_trainer(cfg: ExperimentConfig, extra_callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """The Trainer of a run: TensorBoard logger, last/periodic checkpoints, LR monitor, data-event counters."""
    run_dir = cfg.run_dir
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, every_n_train_steps=0, save_top_k=0),
        LearningRateMonitor(logging_interval="step"),
        DataEventsCallback(),
        *build_callbacks(cfg.callbacks),
        *(extra_callbacks or []),
    ]
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="")
    kwargs = trainer_kwargs(cfg.trainer.kwargs())
    return L.Trainer(default_root_dir=str(run_dir), logger=logger, callbacks=callbacks, **kwargs)


def run(cfg: ExperimentConfig) -> dict:
    """Trains the experiment's stage; returns the run directory, the last checkpoint and the final metrics."""
    if cfg.stage is None:
        raise ValueError(f"experiment {cfg.name!r} has no stage; pick one with stage=<option>")
    L.seed_everything(cfg.seed, workers=True)
    save_config(cfg, cfg.run_dir)
    module = build_stage(cfg)
    datamodule = CheersDataModule(cfg.data)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.resume_from)
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)
    metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return {"run_dir": str(cfg.run_dir), "checkpoint": str(last), "global_step": trainer.global_step, **metrics}
