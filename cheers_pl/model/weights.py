"""The exported-model directory: a trained network that reloads with one call, no training code needed.

Layout of `<dir>`:
    cheers_config.json   `CheersConfig` as JSON (pretrained paths cleared, vocabulary and head tying as built)
    model.safetensors    every parameter and buffer (tied LM head stored once; VAE normaliser statistics included)
    tokenizer/           the text tokenizer (written by `cheers_pl.pipeline.CheersPipeline.save_pretrained`)

`CheersModel.save_pretrained(dir)` writes the first two through `save_weights`, `CheersModel.from_pretrained(dir)`
rebuilds the architecture from the JSON and loads the weights strictly. JSON instead of YAML keeps
`cheers_pl.model` free of omegaconf (R2); nested dataclasses are rebuilt field by field, and an unknown key is a
`ValueError` naming it (R15). Names of earlier releases are renamed on load (`RENAMED_KEYS`): the vision tokenizer
was `tokenizer`, it is `vision` now.
"""

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_model
from torch import nn

CONFIG_FILE = "cheers_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
# old top-level name -> new one, for model config keys and the parameter names below them
RENAMED_KEYS = {"tokenizer": "vision"}


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A `CheersConfig` dict with the names of earlier releases renamed (`RENAMED_KEYS`)."""
    return {RENAMED_KEYS.get(k, k): v for k, v in data.items()}


def upgrade_parameter_name(name: str, prefix: str = "") -> str:
    """`<prefix>tokenizer.x` -> `<prefix>vision.x` (`RENAMED_KEYS`); other names unchanged."""
    for old, new in RENAMED_KEYS.items():
        if name.startswith(f"{prefix}{old}."):
            return f"{prefix}{new}." + name[len(prefix) + len(old) + 1 :]
    return name


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A (nested) config dataclass as a JSON-able dict."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Rebuilds a (nested) config dataclass from `config_to_dict` output; validation runs in `__post_init__`.

    Raises:
        ValueError: for a key the dataclass does not have (naming its dotted path).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{CONFIG_FILE}: unknown keys {[f'{where}{k}' for k in unknown]} for {cls.__name__}")
    kwargs = {}
    for key, value in data.items():
        kind = hints[key]
        options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
        nested = next((o for o in options if dataclasses.is_dataclass(o)), None)
        if nested is not None and isinstance(value, dict):
            value = config_from_dict(nested, value, f"{where}{key}.")
        elif isinstance(value, list) and typing.get_origin(kind) is tuple:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def save_weights(model: nn.Module, cfg: Any, directory: str | Path) -> Path:
    """Writes `cfg` as JSON and every tensor of `model` as safetensors to `directory` (created); returns it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config_to_dict(cfg), indent=2))
    save_model(model, str(out / WEIGHTS_FILE))  # stores a shared (tied) tensor once
    return out


def read_config(directory: str | Path) -> dict[str, Any]:
    """The config dict of an exported directory (renamed keys upgraded).

    Raises:
        ValueError: when the directory lacks the config or the weights.
    """
    src = Path(directory)
    missing = [p for p in (CONFIG_FILE, WEIGHTS_FILE) if not (src / p).exists()]
    if missing:
        raise ValueError(f"{src} is not an exported Cheers model: missing {missing} (write it with save_pretrained)")
    try:
        return upgrade_config_dict(json.loads((src / CONFIG_FILE).read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{src / CONFIG_FILE}: not valid JSON ({err})") from err


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Loads `<directory>/model.safetensors` into `model` strictly (old parameter names renamed).

    A tied tensor (the LM head) is stored once, under one of its names; the others count as loaded.

    Raises:
        ValueError: when the weights do not fit the model.
    """
    path = Path(directory) / WEIGHTS_FILE
    fits = f"{path} does not fit {Path(directory) / CONFIG_FILE}"
    state = {upgrade_parameter_name(k): v for k, v in load_file(str(path)).items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{fits}: {err}") from err
    tensors = model.state_dict(keep_vars=True)
    loaded = {id(tensors[k]) for k in state if k in tensors}
    missing = [k for k in missing if id(tensors[k]) not in loaded]
    if missing or unexpected:
        raise ValueError(f"{fits}: missing {missing[:8]}, unexpected {unexpected[:8]}")
