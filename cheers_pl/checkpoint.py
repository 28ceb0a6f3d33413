"""Loading a trained stage back from its Lightning checkpoint, with the config saved inside it (R13)."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

from cheers_pl.config import ExperimentConfig, from_node
from cheers_pl.stage import build_stage
from cheers_pl.stage.base import CONFIG_KEY, StageModule


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict (on CPU).

    Raises:
        ValueError: when the file is missing or not a checkpoint of this package.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ckpt={str(path)!r}: no such file")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if CONFIG_KEY not in ckpt:
        raise ValueError(f"ckpt={str(path)!r}: no saved config ({CONFIG_KEY!r}); not a cheers_pl checkpoint")
    return ckpt


def config_of(ckpt: dict, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The experiment config stored in a checkpoint (+ `key=value` overrides), validated again."""
    node = OmegaConf.merge(OmegaConf.create(ckpt[CONFIG_KEY]), OmegaConf.from_dotlist(list(overrides)))
    return from_node(node, "checkpoint config")


def load_stage(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str = "cpu", ckpt: dict | None = None
) -> StageModule:
    """Rebuilds the stage of a checkpoint (without re-running `init_from`) and loads all its weights, in eval mode.

    `ckpt` is the already-read checkpoint of `path`, when the caller has one (saves reading it twice).
    """
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    cfg = config_of(ckpt, ["stage.init_from=null", *overrides])
    stage = build_stage(cfg)
    stage.load_state_dict(ckpt["state_dict"])
    return stage.to(device).eval()
