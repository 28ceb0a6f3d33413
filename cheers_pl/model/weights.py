"""The exported-model directory: a trained network that reloads with one call, no training code needed.

Layout of `<dir>`:
    cheers_config.json   `CheersConfig` as JSON (pretrained paths cleared, vocabulary and head tying as built)
    model.safetensors    every parameter and buffer (tied LM head stored once; VAE normaliser statistics included),
                         or shards `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json` (the Hugging
                         Face layout, written by `huggingface_hub.save_torch_state_dict`) when `max_shard_size` is set
    tokenizer/           the text tokenizer (written by `cheers_pl.pipeline.CheersPipeline.save_pretrained`)
    pipeline.json        the pipeline's sampling and processing settings (likewise)

`CheersModel.save_pretrained(dir)` writes the first two through `save_weights`, `CheersModel.from_pretrained(dir)`
rebuilds the architecture from the JSON with its parameters on the meta device (`parameters_on_meta`: no random
init, no copy in another dtype) and assigns the stored tensors strictly, in the dtype they were stored in. JSON
instead of YAML keeps `cheers_pl.model` free of omegaconf (R2); nested dataclasses are rebuilt field by field, and an
unknown key is a `ValueError` naming it (R15). Names of earlier releases are renamed on load (`RENAMED_KEYS`): the
vision tokenizer was `tokenizer`, it is `vision` now.
"""

import contextlib
import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file, save_model
from torch import nn

CONFIG_FILE = "cheers_config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
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


def save_weights(
    model: nn.Module | dict[str, torch.Tensor], cfg: Any, directory: str | Path, max_shard_size: int | None = None
) -> Path:
    """Writes `cfg` as JSON and every tensor of `model` (a module or a state dict) as safetensors to `directory`
    (created); returns it. A shared (tied) tensor is stored once. With `max_shard_size` (bytes) the tensors are
    split into shards with an index, the Hugging Face layout."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config_to_dict(cfg), indent=2))
    if max_shard_size is None and isinstance(model, nn.Module):
        save_model(model, str(out / WEIGHTS_FILE))
    else:
        state = model.state_dict() if isinstance(model, nn.Module) else model
        save_torch_state_dict(state, out, max_shard_size=max_shard_size or 2**62)
    return out


def _has_weights(src: Path) -> bool:
    return (src / WEIGHTS_FILE).is_file() or (src / INDEX_FILE).is_file()


def read_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of `model.safetensors` or of the shards its index names, as stored (names not upgraded)."""
    src = Path(directory)
    if not (src / INDEX_FILE).is_file():
        return _load_file(src / WEIGHTS_FILE)
    weight_map = json.loads((src / INDEX_FILE).read_text())["weight_map"]
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(_load_file(src / shard))
    return state


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error type, without the file's name, for a cut file
        raise ValueError(f"{str(path)!r}: cannot read safetensors weights ({err})") from err


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no storage, no init) and their buffers as usual.

    Buffers stay real because non-persistent ones (RoPE frequencies, position ids) are computed at construction and
    are not stored with the weights. The same idea as `accelerate.init_empty_weights(include_buffers=False)`,
    without that dependency: `nn.Module.register_parameter` moves each new parameter to meta.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def read_config(directory: str | Path) -> dict[str, Any]:
    """The config dict of an exported directory (renamed keys upgraded).

    Raises:
        ValueError: when the directory lacks the config or the weights.
    """
    src = Path(directory)
    missing = [CONFIG_FILE] if not (src / CONFIG_FILE).exists() else []
    missing += [] if _has_weights(src) else [WEIGHTS_FILE]
    if missing:
        raise ValueError(f"{src} is not an exported Cheers model: missing {missing} (write it with save_pretrained)")
    try:
        return upgrade_config_dict(json.loads((src / CONFIG_FILE).read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{src / CONFIG_FILE}: not valid JSON ({err})") from err


def _shared_groups(model: nn.Module) -> list[list[str]]:
    """Names of the parameters that are one tensor (a tied LM head), per tensor, for tensors with several names."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _set_parameter(model: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner), leaf, param)


def load_weights(model: nn.Module, directory: str | Path, assign: bool = False) -> None:
    """Loads the weights of `<directory>` (one file or shards) into `model` strictly (old parameter names renamed).

    A tied tensor (the LM head) is stored once, under one of its names; the others count as loaded. With `assign`
    the stored tensors replace the model's (e.g. meta) parameters and buffers, keeping their dtype, and tied
    parameters are tied again to the loaded tensor.

    Raises:
        ValueError: when the weights do not fit the model.
    """
    src = Path(directory)
    fits = f"{src / (INDEX_FILE if (src / INDEX_FILE).is_file() else WEIGHTS_FILE)} does not fit {src / CONFIG_FILE}"
    state = {upgrade_parameter_name(k): v for k, v in read_state(src).items()}
    groups = _shared_groups(model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as err:
        raise ValueError(f"{fits}: {err}") from err
    for names in groups:
        loaded = [n for n in names if n in state]
        if assign and loaded:  # assignment replaced one name of the shared tensor: give it to all its names
            keep = model.get_parameter(loaded[0])
            for name in names:
                _set_parameter(model, name, keep)
        if loaded:
            missing = [k for k in missing if k not in names]
    if missing or unexpected:
        raise ValueError(f"{fits}: missing {missing[:8]}, unexpected {unexpected[:8]}")
