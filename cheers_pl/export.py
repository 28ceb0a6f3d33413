"""Export a training checkpoint to the one-call reloadable model directory (`CheersModel.from_pretrained(dir)`).

The checkpoint carries its resolved config (R13): the model is rebuilt from it with random weights (pretrained paths
are not re-read, so nothing is downloaded), the checkpoint's `model.*` tensors are loaded strictly, and the text
tokenizer of the run (`data.text_tokenizer`, or the one next to the shards) is saved with it.
"""

import dataclasses
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cheers_pl.config import from_node
from cheers_pl.data.text_tokenizer import load_tokenizer
from cheers_pl.model.cheers import CheersModel

CONFIG_KEY = "cheers_config"  # = cheers_pl.stage.base.CONFIG_KEY (kept import-free of the stages)


def _without_pretrained(cfg: object) -> object:
    """The model config with every pretrained path dropped (the checkpoint has the weights)."""
    tok = cfg.tokenizer
    return dataclasses.replace(
        cfg,
        llm=dataclasses.replace(cfg.llm, pretrained=None),
        tokenizer=dataclasses.replace(
            tok,
            vae=dataclasses.replace(tok.vae, pretrained=None),
            encoder=dataclasses.replace(tok.encoder, pretrained=None),
        ),
    )


def model_from_checkpoint(path: str | Path) -> CheersModel:
    """The `CheersModel` of a stage checkpoint (`last.ckpt`), weights loaded strictly, eval mode.

    Raises:
        ValueError: unreadable file, no saved config, or weights that do not fit the saved config.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"checkpoint {str(path)!r}: cannot read ({err})") from err
    if CONFIG_KEY not in ckpt:
        raise ValueError(f"checkpoint {str(path)!r} has no saved config ({CONFIG_KEY!r}); was it written by a stage?")
    cfg = from_node(OmegaConf.create(ckpt[CONFIG_KEY]), f"{path}:{CONFIG_KEY}")
    model = CheersModel(_without_pretrained(cfg.model), load_tokenizer(cfg.data.tokenizer_path()))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {str(path)!r}: weights do not fit its config: {err}") from err
    return model.eval()


def export_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    """Writes the model of a stage checkpoint to `out_dir` (config JSON, safetensors, tokenizer); returns it."""
    return model_from_checkpoint(path).save_pretrained(out_dir)
