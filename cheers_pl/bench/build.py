"""Building what the benchmarks time: experiment configs of a preset, models, and one real training batch.

Every benchmark builds from `conf/` (random weights, no checkpoint): `experiment_config("small", "generation")` is
`compose("tiny_generation", ["model=small", "stage.init_from=null", ...])`.
"""

import warnings

import torch

from cheers_pl.config import ExperimentConfig, compose
from cheers_pl.data.batch import Batch
from cheers_pl.data.datamodule import CheersDataModule
from cheers_pl.data.text_tokenizer import load_text_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel
from cheers_pl.pipeline import CheersPipeline

STAGE_EXPERIMENTS = {"tokenizer": "tiny_tokenizer", "align": "tiny_align", "generation": "tiny_generation"}


def experiment_config(
    preset: str, stage: str = "generation", overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """The tiny experiment of `stage` with `model=<preset>`, no `init_from`, no callbacks and in-process data."""
    if stage not in STAGE_EXPERIMENTS:
        raise ValueError(f"stage={stage!r} is not one of {sorted(STAGE_EXPERIMENTS)}")
    base = [f"model={preset}", "stage.init_from=null", "callbacks=none", "data.num_workers=0"]
    if stage == "tokenizer":
        base.append("stage.refresh_stats_every=0")  # an occasional statistics pass, not part of a training step
    return compose(STAGE_EXPERIMENTS[stage], [*base, *overrides])


def build_pipeline(cfg: ExperimentConfig, model_cfg: CheersConfig | None = None, device: str = "cpu") -> CheersPipeline:
    """A random `CheersModel` of `model_cfg` (default `cfg.model`) with the experiment's text tokenizer."""
    text_tokenizer = load_text_tokenizer(cfg.data.text_tokenizer_path())
    model = CheersModel(model_cfg if model_cfg is not None else cfg.model, vocab_size=len(text_tokenizer))
    return CheersPipeline(model.to(device), text_tokenizer)


def build_model(cfg: ExperimentConfig, model_cfg: CheersConfig | None = None, device: str = "cpu") -> CheersModel:
    """The model of `build_pipeline`."""
    return build_pipeline(cfg, model_cfg, device).model


def first_batch(cfg: ExperimentConfig, device: str = "cpu") -> Batch:
    """The first training batch of the experiment's data (in-process loading), moved to `device`."""
    dm = CheersDataModule(cfg.data, rank=0, world_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = next(iter(dm.train_dataloader()))
    for name in ("images", "task", "input_ids", "labels", "pad_mask", "block_ids", "prompt_mask"):
        setattr(batch, name, getattr(batch, name).to(device))
    return batch


def num_parameters(module: torch.nn.Module) -> int:
    """All parameters of a module."""
    return sum(p.numel() for p in module.parameters())
