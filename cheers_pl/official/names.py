"""Tensor names of the released checkpoint ↔ ours, and the transforms between the two layouts.

Every rule maps one of our state-dict names to one released name plus a transform kind (`TRANSFORMS`), so the mapping
is a bijection on the tensors both sides have and inverts exactly (bit for bit: the transforms only move values).

- LLM: `model.language_model.*` ↔ `llm.hf.model.*`, `lm_head.weight` ↔ `llm.hf.lm_head.weight`.
- SigLIP2: `model.vision_representation.*` ↔ `vision.encoder.model.*`; its attention-pooling `head.*` is dropped.
- VAE and decoder copy: the original FLUX naming of `model.vae_model.*` / `model.vae_decoder_projector.*`
  (`encoder.down.i.block.j`, `decoder.up.i.block.j` with up level i counted from the full resolution, `mid.block_1`,
  `mid.attn_1.{q,k,v,proj_out}` as 1×1 convs, `nin_shortcut`, `norm_out`, `quant_conv` inside the encoder and
  `post_quant_conv` inside the decoder) ↔ diffusers `AutoencoderKLFlux2` (`down_blocks.i.resnets.j`,
  `up_blocks.(n−1−i)`, `mid_block.resnets.0`, `mid_block.attentions.0.{to_q,to_k,to_v,to_out.0}` as linears,
  `conv_shortcut`, `conv_norm_out`, top-level `quant_conv` / `post_quant_conv`); both latent BatchNorms (`bn.*`).
- Heads: `model.time_embed.mlp_{1,2}` ↔ `flow_head.time_embed{1,2}.mlp`; `model.gen_projector` / `hi_projector`
  (`diffusion_head_a.i`: `input_layernorm`, `post_attention_layernorm`, `attn`, `mlp`, `adaLN_modulation.1`;
  `diffusion_head_b`: `norm_final`, `linear`, `adaLN_modulation.1`) ↔ `flow_head.stage{1,2}` (`blocks.i`: `norm1`,
  `norm2`, `attn`, `mlp`, `adaln.linear`; `final`: `norm`, `linear`, `adaln.linear`); `model.hi_gate` (`gate`,
  `layer_norm`) ↔ `flow_head.hfi` (`gate`, `norm`); `model.und_projector` (`layernorm`, `mlp`) ↔
  `vision.compressor` (`norm`, `mlp`).
- Channel order: the released 2×2 (un)shuffles order channels (kh, kw, c), `F.pixel_(un)shuffle` (c, kh, kw); the
  stage-1 output rows (`shuffle_rows`) and the projector's first input columns (`unshuffle_cols`) are permuted.
"""

import re
from collections.abc import Callable

import torch

DROPPED_PREFIXES = {
    "model.vision_representation.head.": "SigLIP2's attention-pooling head: Cheers reads the last hidden state only",
}
TIED_HEAD_REASON = "equal to model.language_model.embed_tokens.weight: the LM head is tied to the embedding"
LM_HEAD = "lm_head.weight"
EMBED = "model.language_model.embed_tokens.weight"


def _unshuffle_cols_to_ours(t: torch.Tensor, k: int) -> torch.Tensor:
    out, width = t.shape
    return t.reshape(out, k, width // k).transpose(1, 2).reshape(out, width)


def _unshuffle_cols_to_official(t: torch.Tensor, k: int) -> torch.Tensor:
    out, width = t.shape
    return t.reshape(out, width // k, k).transpose(1, 2).reshape(out, width)


def _shuffle_rows_to_ours(t: torch.Tensor, k: int) -> torch.Tensor:
    rows = t.shape[0]
    return t.reshape(k, rows // k, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _shuffle_rows_to_official(t: torch.Tensor, k: int) -> torch.Tensor:
    rows = t.shape[0]
    return t.reshape(rows // k, k, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


# kind -> (released -> ours, ours -> released); `k` is the number of (un)shuffled positions f² (4 for 2×2)
TRANSFORMS: dict[str, tuple[Callable[[torch.Tensor, int], torch.Tensor], Callable[[torch.Tensor, int], torch.Tensor]]]
TRANSFORMS = {
    "copy": (lambda t, k: t, lambda t, k: t),
    "conv1x1": (lambda t, k: t.reshape(t.shape[:2]), lambda t, k: t.reshape(*t.shape, 1, 1)),
    "shuffle_rows": (_shuffle_rows_to_ours, _shuffle_rows_to_official),
    "unshuffle_cols": (_unshuffle_cols_to_ours, _unshuffle_cols_to_official),
}

_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_RESNET = {"conv_shortcut": "nin_shortcut"}
_MID = {"resnets.0": "block_1", "resnets.1": "block_2"}


def _vae_part(rest: str, num_levels: int) -> tuple[str, str] | None:
    """One name below our `encoder.` / `decoder.` (diffusers) → the FLUX name below the same prefix, transform."""
    side, _, tail = rest.partition(".")
    if side not in ("encoder", "decoder"):
        return None
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", tail):
        kind, level, block, layer, leaf = m.groups()
        level = int(level) if kind == "down" else num_levels - 1 - int(level)
        return f"{side}.{kind}.{level}.block.{block}.{_RESNET.get(layer, layer)}.{leaf}", "copy"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(weight|bias)", tail):
        kind, level, sampler, leaf = m.groups()
        level = int(level) if kind == "down" else num_levels - 1 - int(level)
        return f"{side}.{kind}.{level}.{sampler[:-2]}.conv.{leaf}", "copy"
    if m := re.fullmatch(r"mid_block\.(resnets\.[01])\.(\w+)\.(weight|bias)", tail):
        return f"{side}.mid.{_MID[m.group(1)]}.{m.group(2)}.{m.group(3)}", "copy"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", tail):
        layer, leaf = m.groups()
        kind = "conv1x1" if leaf == "weight" and layer != "group_norm" else "copy"
        return f"{side}.mid.attn_1.{_ATTN[layer]}.{leaf}", kind
    if m := re.fullmatch(r"(conv_in|conv_out|conv_norm_out)\.(weight|bias)", tail):
        layer = "norm_out" if m.group(1) == "conv_norm_out" else m.group(1)
        return f"{side}.{layer}.{m.group(2)}", "copy"
    return None


_DIT_BLOCK = {"norm1.weight": "input_layernorm.weight", "norm2.weight": "post_attention_layernorm.weight"}
_DIT_FINAL = {"norm.weight": "norm_final.weight", "linear.weight": "linear.weight", "linear.bias": "linear.bias"}
_HEAD_STAGES = {"stage1": "model.gen_projector", "stage2": "model.hi_projector"}


def _flow_head_part(rest: str) -> tuple[str, str] | None:
    if m := re.fullmatch(r"time_embed([12])\.mlp\.([02])\.(weight|bias)", rest):
        return f"model.time_embed.mlp_{m.group(1)}.{m.group(2)}.{m.group(3)}", "copy"
    if m := re.fullmatch(r"hfi\.(gate\.[02]|norm)\.(weight|bias)", rest):
        layer = "layer_norm" if m.group(1) == "norm" else m.group(1)
        return f"model.hi_gate.{layer}.{m.group(2)}", "copy"
    if m := re.fullmatch(r"(stage[12])\.blocks\.(\d+)\.(.+)", rest):
        stage, block, leaf = m.groups()
        leaf = _DIT_BLOCK.get(leaf, leaf.replace("adaln.linear.", "adaLN_modulation.1."))
        return f"{_HEAD_STAGES[stage]}.diffusion_head_a.{block}.{leaf}", "copy"
    if m := re.fullmatch(r"(stage[12])\.final\.(.+)", rest):
        stage, leaf = m.groups()
        official = _DIT_FINAL.get(leaf, leaf.replace("adaln.linear.", "adaLN_modulation.1."))
        kind = "shuffle_rows" if stage == "stage1" and leaf.startswith("linear.") else "copy"
        return f"{_HEAD_STAGES[stage]}.diffusion_head_b.{official}", kind
    return None


def official_name(name: str, num_vae_levels: int) -> tuple[str, str] | None:
    """Our state-dict name → (the released name, transform kind), or None for a tensor the release does not have.

    Args:
        name: A name of `CheersModel.state_dict()`.
        num_vae_levels: Resolution levels of the VAE (`len(vae.block_out_channels)`; the decoder's up blocks are
            numbered in opposite directions by the two namings).
    """
    simple = [
        ("llm.hf.model.", "model.language_model."),
        ("vision.encoder.model.", "model.vision_representation."),
    ]
    for ours, theirs in simple:
        if name.startswith(ours):
            return theirs + name[len(ours) :], "copy"
    if name == "llm.hf.lm_head.weight":
        return LM_HEAD, "copy"
    if m := re.fullmatch(r"vision\.compressor\.(norm|mlp\.[02])\.(weight|bias)", name):
        layer = "layernorm" if m.group(1) == "norm" else m.group(1)
        kind = "unshuffle_cols" if m.group(1) == "mlp.0" and m.group(2) == "weight" else "copy"
        return f"model.und_projector.{layer}.{m.group(2)}", kind
    if name.startswith("flow_head."):
        return _flow_head_part(name.removeprefix("flow_head."))
    for ours, theirs in (("vision.vae.autoencoder.", "model.vae_model."), ("vision.pixel_decoder.", None)):
        if not name.startswith(ours):
            continue
        rest = name[len(ours) :]
        prefix = theirs or "model.vae_decoder_projector."
        if rest.startswith("bn."):
            return prefix + rest, "copy"
        if rest.startswith("quant_conv."):
            return f"{prefix}encoder.{rest}", "copy"
        if rest.startswith("post_quant_conv."):
            return f"{prefix}decoder.{rest}", "copy"
        part = _vae_part(rest, num_vae_levels)
        return (prefix + part[0], part[1]) if part else None
    return None


def dropped_reason(official: str) -> str | None:
    """Why a released tensor has no counterpart here (None when it should have one)."""
    return next((reason for prefix, reason in DROPPED_PREFIXES.items() if official.startswith(prefix)), None)
