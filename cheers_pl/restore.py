"""Rebuilding a trained stage from its Lightning checkpoint, with the config saved inside it (R13).

Used by the commands that start from a checkpoint (`evaluate`, `answer`, `sample`) and by the notebook:
`load_stage(path)` validates the stored config against the schema registry (keys of earlier releases renamed),
builds the stage without re-running `init_from` and loads all its weights.
"""

from pathlib import Path

from cheers_pl.checkpoint import read_checkpoint, upgrade_state_dict
from cheers_pl.config import config_of_checkpoint
from cheers_pl.stage import build_stage
from cheers_pl.stage.base import StageModule


def load_stage(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str = "cpu", ckpt: dict | None = None
) -> StageModule:
    """Rebuilds the stage of a checkpoint and loads all its weights, in eval mode.

    `ckpt` is the already-read checkpoint of `path`, when the caller has one (saves reading it twice).

    Raises:
        ValueError: naming the file when it is missing, unreadable, has no saved config or weights that do not fit.
    """
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    cfg = config_of_checkpoint(ckpt, ["stage.init_from=null", *overrides], path)
    stage = build_stage(cfg)
    try:
        stage.load_state_dict(upgrade_state_dict(ckpt["state_dict"]))
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"ckpt={str(path)!r}: weights do not fit its saved config ({err})") from err
    return stage.to(device).eval()
