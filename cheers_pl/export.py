"""Export a training checkpoint to the one-call reloadable directory (`CheersPipeline.from_pretrained(dir)`).

The checkpoint carries its resolved config (R13): the model is rebuilt from it with random weights (pretrained paths
are not re-read, so nothing is downloaded), the checkpoint's `model.*` tensors are loaded strictly (names of
earlier releases renamed), and the text tokenizer of the run (`data.text_tokenizer`, or the one next to the shards)
is saved with it.
"""

import dataclasses
from pathlib import Path

from cheers_pl.checkpoint import read_checkpoint, upgrade_state_dict
from cheers_pl.config import config_of_checkpoint
from cheers_pl.data.text_tokenizer import load_text_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel
from cheers_pl.pipeline import CheersPipeline


def _without_pretrained(cfg: CheersConfig) -> CheersConfig:
    """The model config with every pretrained path dropped (the checkpoint has the weights)."""
    vis = cfg.vision
    return dataclasses.replace(
        cfg,
        llm=dataclasses.replace(cfg.llm, pretrained=None),
        vision=dataclasses.replace(
            vis,
            vae=dataclasses.replace(vis.vae, pretrained=None),
            encoder=dataclasses.replace(vis.encoder, pretrained=None),
        ),
    )


def pipeline_from_checkpoint(path: str | Path) -> CheersPipeline:
    """The `CheersPipeline` of a stage checkpoint (`last.ckpt`), weights loaded strictly, model in eval mode.

    Raises:
        ValueError: unreadable file, no saved config, or weights that do not fit the saved config.
    """
    ckpt = read_checkpoint(path)
    cfg = config_of_checkpoint(ckpt, path=path)
    text_tokenizer = load_text_tokenizer(cfg.data.text_tokenizer_path())
    model = CheersModel(_without_pretrained(cfg.model), vocab_size=len(text_tokenizer))
    state = upgrade_state_dict(ckpt["state_dict"])
    state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {str(path)!r}: weights do not fit its config: {err}") from err
    return CheersPipeline(model.eval(), text_tokenizer, getattr(cfg.stage, "sampling", None), cfg.data.processing)


def export_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    """Writes the model of a stage checkpoint to `out_dir` (config JSON, safetensors, tokenizer); returns it."""
    return pipeline_from_checkpoint(path).save_pretrained(out_dir)
