"""`export-tokenizer`: a trained vision tokenizer as a small directory any multimodal stage starts from.

`python -m cheers_pl export-tokenizer ckpt=runs/recipe/tiny_tokenizer_encoder/checkpoints/last.ckpt
out_dir=checkpoints/tiny_tokenizer` writes
    model.safetensors   the `vision.*` (VAE, normaliser statistics, D, encoder) and `contrastive.*` tensors; not the
                        token compressor (the tokenizer stage does not train it: the next stage trains it from its own
                        init) nor the token-attribute heads (pretraining only)
    tokenizer/          the text tokenizer the text tower was trained with
    card.json           provenance (checkpoint hash, experiment, step) and figures measured here on the synthetic
                        world's test scenes: PSNR of the VAE and of D(x1), the scene parser's recovery from D(x1),
                        image→caption retrieval top-1 among 32, and (when trained with them) the token-attribute heads'
                        accuracy on the tokens an object covers
`stage.init_from=<dir>` reads it (an exported directory); the text tokenizer of the run must be the same one.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from cheers_pl.checkpoint import read_checkpoint, upgrade_state_dict
from cheers_pl.data.processing import to_unit
from cheers_pl.data.synthetic import make_sample
from cheers_pl.data.synthetic_scene import Scene
from cheers_pl.data.text_tokenizer import save_text_tokenizer, vocab_fingerprint
from cheers_pl.eval.reconstruction import psnr, reconstruct, recovery_scores
from cheers_pl.eval.retrieval import retrieval_scores
from cheers_pl.restore import load_stage

PREFIXES = ("model.vision.", "model.contrastive.")
EXCLUDED = ("model.vision.compressor.",)
CARD = "card.json"


@dataclass
class ExportTokenizerArgs:
    """Arguments of `python -m cheers_pl export-tokenizer`."""

    ckpt: str = "???"
    out_dir: str = "???"
    num_scenes: int = 256  # test scenes the figures are measured on


def _scenes(cfg: Any, split: str, num: int) -> tuple[torch.Tensor, list[Scene], list[str]]:
    samples = [make_sample(i, split, cfg) for i in range(num)]
    images = torch.stack([torch.from_numpy(s["image"]).permute(2, 0, 1).float() / 127.5 - 1 for s in samples])
    return images, [Scene.from_json(s["json"]["scene"]) for s in samples], [s["caption"] for s in samples]


@torch.no_grad()
def measure(stage: Any, num_scenes: int) -> dict[str, Any]:
    """The card's figures of a tokenizer stage on the first `num_scenes` test scenes of its synthetic world."""
    world = stage.cfg.data.synthetic
    images, scenes, captions = _scenes(world, "test", num_scenes)
    vision = stage.model.vision.eval()
    psnrs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, num_scenes, 64):
        x = images[start : start + 64]
        for key, value in reconstruct(vision, x).items():
            psnrs.setdefault(key, []).append(psnr(to_unit(value), to_unit(x)))
    figures: dict[str, Any] = {f"psnr_{k}": round(torch.cat(v).mean().item(), 2) for k, v in psnrs.items()}
    figures["parser_recovery"] = recovery_scores(vision, images, scenes, world)
    if getattr(stage.model, "contrastive", None) is not None:
        figures["retrieval"] = retrieval_scores(stage.contrastive_embed, images, captions, 32)
    if getattr(stage.model, "attribute_heads", None) is not None:
        figures["token_attributes"] = stage.attribute_accuracy(images, scenes)
    figures["protocol"] = {"split": "test", "num_scenes": num_scenes, "captions": "canonical"}
    return figures


def export_tokenizer(ckpt_path: str | Path, out_dir: str | Path, num_scenes: int = 256) -> dict[str, Any]:
    """Writes the directory (see the module docstring) and returns its card."""
    ckpt = read_checkpoint(ckpt_path)
    stage = load_stage(ckpt_path, ckpt=ckpt)
    state = {
        k.removeprefix("model."): v.contiguous()
        for k, v in upgrade_state_dict(ckpt["state_dict"]).items()
        if k.startswith(PREFIXES) and not k.startswith(EXCLUDED)
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    tokenizer = getattr(stage, "text_tokenizer", None)
    if tokenizer is not None:
        save_text_tokenizer(tokenizer, out / "tokenizer")
    card = {
        "source": {
            "experiment": stage.cfg.name,
            "global_step": int(ckpt.get("global_step", -1)),
            "checkpoint_sha256": hashlib.sha256(Path(ckpt_path).read_bytes()).hexdigest(),
        },
        "text_tokenizer_vocab": vocab_fingerprint(tokenizer) if tokenizer is not None else None,
        "num_parameters": sum(v.numel() for v in state.values()),
        "bytes": (out / "model.safetensors").stat().st_size,
        "figures": measure(stage, num_scenes),
    }
    (out / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card
