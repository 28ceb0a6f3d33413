"""Stage checkpoints as files: reading one with a clear error, the config saved inside it, and renamed keys.

A stage checkpoint is Lightning's dict with the resolved experiment config as YAML under `CONFIG_KEY` (R13).
Checkpoints written before a rename still load: `upgrade_state_dict` and `upgrade_config` rename the parameter
names (`model.tokenizer.*` → `model.vision.*`, `cheers_pl.model.weights.RENAMED_KEYS`) and the config keys
(`RENAMED_CONFIG_KEYS`, with the `trainable` globs that name them). Rebuilding a stage from a checkpoint needs the
schema registry and lives with the commands (`cheers_pl.restore`).
"""

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from cheers_pl.model.weights import upgrade_parameter_name

CONFIG_KEY = "cheers_config"
# dotted config key of an earlier release -> its name now
RENAMED_CONFIG_KEYS = {"model.tokenizer": "model.vision", "data.tokenizer_vocab_size": "data.text_tokenizer_vocab_size"}


def read_checkpoint(path: str | Path, what: str = "ckpt") -> dict:
    """The checkpoint dict of `path` (on CPU).

    Args:
        path: The file.
        what: The config key or argument that named it, for the error message.

    Raises:
        ValueError: naming `what` and the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}={str(path)!r}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling raises many unrelated types for a foreign or truncated file
        raise ValueError(f"{what}={str(path)!r}: cannot read checkpoint ({err})") from err


def config_yaml(cfg: Any) -> str:
    """A resolved config dataclass as YAML (saved with every run and checkpoint, R13)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def upgrade_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A stage state dict with the parameter names of earlier releases renamed."""
    return {upgrade_parameter_name(k, prefix="model."): v for k, v in state.items()}


def _rename_glob(pattern: str) -> str:
    for old, new in RENAMED_CONFIG_KEYS.items():
        if pattern.startswith(f"{old}."):
            return new + pattern[len(old) :]
    return pattern


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A plain experiment-config dict with the keys of earlier releases renamed (in place and returned)."""
    for old, new in RENAMED_CONFIG_KEYS.items():
        *parents, key = old.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node:
            node[new.rsplit(".", 1)[-1]] = node.pop(key)
    stage = data.get("stage")
    if isinstance(stage, dict) and isinstance(stage.get("trainable"), list):
        stage["trainable"] = [_rename_glob(p) for p in stage["trainable"]]
    return data


def saved_config(ckpt: dict, path: str | Path = "ckpt") -> dict[str, Any]:
    """The experiment config stored in a checkpoint as a plain dict, renamed keys upgraded.

    Raises:
        ValueError: when the checkpoint has no saved config (not written by a stage of this package).
    """
    if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt:
        raise ValueError(f"ckpt={str(path)!r}: no saved config ({CONFIG_KEY!r}); not a cheers_pl checkpoint")
    return upgrade_config(OmegaConf.to_container(OmegaConf.create(ckpt[CONFIG_KEY])))
