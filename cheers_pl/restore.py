"""Rebuilding a trained stage from its Lightning checkpoint, with the config saved inside it (R13).

Used by the commands that start from a checkpoint (`evaluate`, `answer`, `sample`) and by the notebook:
`load_stage(path)` validates the stored config against the schema registry (keys of earlier releases renamed),
builds the stage without re-running `init_from` and loads all its weights.
"""

from pathlib import Path

import torch

from cheers_pl.checkpoint import read_checkpoint, upgrade_state_dict
from cheers_pl.config import config_of_checkpoint
from cheers_pl.model.weights import CONFIG_FILE
from cheers_pl.pipeline import CheersPipeline
from cheers_pl.stage import build_stage
from cheers_pl.stage.base import StageModule

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def load_pipeline(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str = "cpu", dtype: str | None = None
) -> CheersPipeline:
    """The text pipeline of a stage checkpoint (`last.ckpt`) or of an exported directory (`save_pretrained`,
    `convert-official`), in eval mode on `device`, cast to `dtype` (a `DTYPES` key; None keeps it).

    Raises:
        ValueError: naming the path when it is neither, the stage has no pipeline, or `dtype` is unknown.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    torch_dtype = DTYPES[dtype] if dtype is not None else None
    if Path(path).is_dir():
        if overrides:
            raise ValueError(
                f"ckpt={str(path)!r} is an exported directory: config overrides {list(overrides)} "
                "apply to stage checkpoints only"
            )
        if not (Path(path) / CONFIG_FILE).is_file():
            raise ValueError(f"ckpt={str(path)!r}: a directory without {CONFIG_FILE} (not an exported pipeline)")
        return CheersPipeline.from_pretrained(path, device=device, dtype=torch_dtype)
    stage = load_stage(path, overrides, device=device)
    pipeline = getattr(stage, "pipeline", None)
    if pipeline is None:
        raise ValueError(
            f"ckpt={str(path)!r}: stage {stage.cfg.stage.name!r} has no text pipeline (use align or generation)"
        )
    if torch_dtype is not None:
        pipeline.model.to(torch_dtype)
    return pipeline
