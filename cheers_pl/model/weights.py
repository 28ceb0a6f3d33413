"""The exported-model directory: a trained `CheersModel` that reloads with one call, no training code needed.

Layout of `<dir>`:
    cheers_config.json   `CheersConfig` as JSON (pretrained paths cleared, vocabulary and head tying as built)
    model.safetensors    every parameter and buffer (tied LM head stored once; VAE normaliser statistics included)
    tokenizer/           the text tokenizer with Cheers' special tokens and chat template (`save_pretrained`)

`save_pretrained(model, dir)` writes it, `load_pretrained(dir)` (= `CheersModel.from_pretrained(dir)`) rebuilds the
architecture from the JSON and loads the weights strictly. JSON instead of YAML keeps `cheers_pl.model` free of
omegaconf (R2); nested dataclasses are rebuilt field by field, and an unknown key is a `ValueError` naming it (R15).
"""

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from cheers_pl.data.text_tokenizer import load_tokenizer, save_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel

CONFIG_FILE = "cheers_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


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


def exported_config(model: CheersModel) -> CheersConfig:
    """The model's config as built: no pretrained paths (the weights travel with it), actual vocab and tying."""
    cfg = model.cfg
    tok = cfg.tokenizer
    return dataclasses.replace(
        cfg,
        llm=dataclasses.replace(
            cfg.llm, pretrained=None, vocab_size=model.llm.vocab_size, tie_word_embeddings=model.llm.is_tied
        ),
        tokenizer=dataclasses.replace(
            tok,
            vae=dataclasses.replace(tok.vae, pretrained=None, subfolder=None),
            encoder=dataclasses.replace(tok.encoder, pretrained=None),
        ),
    )


def save_pretrained(model: CheersModel, directory: str | Path) -> Path:
    """Writes config, weights and text tokenizer to `directory` (created); returns it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config_to_dict(exported_config(model)), indent=2))
    save_model(model, str(out / WEIGHTS_FILE))  # stores a shared (tied) tensor once
    save_tokenizer(model.text_tokenizer, out / TOKENIZER_DIR)
    return out


def load_pretrained(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> CheersModel:
    """Rebuilds the exported model (strict: every tensor present, no extra ones); eval mode.

    Raises:
        ValueError: when `directory` lacks one of the three parts, or the weights do not fit the config.
    """
    src = Path(directory)
    missing = [p for p in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR) if not (src / p).exists()]
    if missing:
        raise ValueError(f"{src} is not an exported Cheers model: missing {missing} (write it with save_pretrained)")
    cfg = config_from_dict(CheersConfig, json.loads((src / CONFIG_FILE).read_text()))
    model = CheersModel(cfg, load_tokenizer(str(src / TOKENIZER_DIR)))
    try:
        load_model(model, str(src / WEIGHTS_FILE), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{src / WEIGHTS_FILE} does not fit {src / CONFIG_FILE}: {err}") from err
    return model.to(device=device, dtype=dtype).eval()
