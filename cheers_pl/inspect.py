"""`inspect`: parameters per component and tokens per image of an experiment's model, built on the meta device.

Nothing is allocated or downloaded: `pretrained` paths are ignored (the architecture comes from the config) and the
vocabulary is the configured one. For the 1.5B preset the counts are compared with DESIGN.md §1.4; a count matches
when it lies within 2% of the quoted figure or rounds to it at the precision it is quoted with (`≈ 1.3M` covers
1.25M–1.35M).

`python -m cheers_pl inspect experiment=align_1p5b`
"""

import dataclasses
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from cheers_pl.config import ExperimentConfig
from cheers_pl.model.cheers import CheersConfig
from cheers_pl.model.flow_head import FlowHead
from cheers_pl.model.llm import LLM
from cheers_pl.model.vision_tokenizer import VisionTokenizer

# DESIGN.md §1.4: component -> (figure, half a unit of its last quoted digit, as quoted)
REFERENCE: dict[str, tuple[float, float, str]] = {
    "flow_head.stage1": (348e6, 0.5e6, "≈ 348M"),
    "flow_head.stage2": (83e6, 0.5e6, "≈ 83M"),
    "flow_head.gate": (1.3e6, 0.05e6, "≈ 1.3M"),
    "flow_head.time_embedders": (4.4e6, 0.05e6, "≈ 4.4M"),
    "vision.compressor": (28e6, 0.5e6, "≈ 28M"),
    "llm.body": (1.54e9, 0.005e9, "1.54B"),
    "llm.lm_head_untied": (0.23e9, 0.005e9, "0.23B"),
    "vision.encoder+pool_head": (0.43e9, 0.005e9, "≈ 0.43B"),
    "vision.vae": (84e6, 0.5e6, "≈ 84M"),
    "vision.pixel_decoder": (50e6, 0.5e6, "≈ 50M"),
    "total": (2.8e9, 0.05e9, "≈ 2.8B"),
}
REL_TOLERANCE = 0.02


@dataclass
class InspectArgs:
    """Arguments of the `inspect` command."""

    reference: bool = True  # compare with DESIGN.md §1.4 (meaningful for the 1.5B preset)


def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _architecture_only(cfg: CheersConfig) -> CheersConfig:
    """A copy of `cfg` with every `pretrained` path dropped (warns when one was set, R15)."""
    vis = cfg.vision
    paths = {"llm": cfg.llm.pretrained, "vision.vae": vis.vae.pretrained, "vision.encoder": vis.encoder.pretrained}
    ignored = {k: v for k, v in paths.items() if v is not None}
    if ignored:
        warnings.warn(f"inspect counts the configured architecture; pretrained paths ignored: {ignored}", stacklevel=3)
    return dataclasses.replace(
        cfg,
        llm=dataclasses.replace(cfg.llm, pretrained=None),
        vision=dataclasses.replace(
            vis,
            vae=dataclasses.replace(vis.vae, pretrained=None),
            encoder=dataclasses.replace(vis.encoder, pretrained=None),
        ),
    )


def _pool_head_params(encoder: nn.Module) -> int:
    """Parameters of the SigLIP attention-pool head that checkpoints carry and Cheers drops (0 for other towers)."""
    hf = getattr(encoder, "model", None)
    if hf is None or not hasattr(hf, "config") or not hasattr(hf.config, "num_attention_heads"):
        return 0
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    return _numel(SiglipMultiheadAttentionPoolingHead(hf.config))


def count_parameters(cfg: CheersConfig) -> tuple[dict[str, int], dict[str, object]]:
    """Builds the model's components on the meta device; returns (parameters per component, token geometry)."""
    cfg = _architecture_only(cfg)
    with torch.device("meta"):
        tok = VisionTokenizer(cfg.vision)
        llm = LLM(cfg.llm)
        head = FlowHead(cfg.flow_head)
        pool_head = _pool_head_params(tok.encoder)
    ae = tok.vae.autoencoder
    lm_head = 0 if llm.is_tied else llm.hf.lm_head.weight.numel()
    counts = {
        "vision.vae": _numel(tok.vae),
        "vision.vae.encoder": _numel(ae.encoder) + _numel(getattr(ae, "quant_conv", None)),
        "vision.vae.decoder": _numel(ae.decoder) + _numel(getattr(ae, "post_quant_conv", None)),
        "vision.pixel_decoder": _numel(tok.pixel_decoder),
        "vision.encoder": _numel(tok.encoder),
        "vision.encoder+pool_head": _numel(tok.encoder) + pool_head,
        "vision.latent_embed": _numel(tok.latent_embed),
        "vision.compressor": _numel(tok.compressor),
        "llm.body": _numel(llm) - lm_head,
        "llm.lm_head_untied": lm_head,
        "flow_head.stage1": _numel(head.stage1),
        "flow_head.stage2": _numel(head.stage2),
        "flow_head.gate": _numel(head.hfi),
        "flow_head.time_embedders": _numel(head.time_embed1) + _numel(head.time_embed2),
        "total": _numel(tok) + _numel(llm) + _numel(head),
    }
    h, w = tok.semantic_grid_hw
    side = tok.encoder.image_size
    geometry = {
        "image_size": side,
        "latent_shape": [tok.latent_dim, h, w],
        "semantic_tokens_per_image": tok.encoder.num_tokens,
        "llm_tokens_per_image": tok.num_image_tokens,
        "llm_dim": llm.hidden_dim,
        "vocab_size": llm.vocab_size,
    }
    return counts, geometry


def compare(counts: dict[str, int]) -> dict[str, dict[str, object]]:
    """Each DESIGN.md §1.4 figure next to the built count: relative deviation and whether it matches."""
    out = {}
    for name, (ref, half_unit, quoted) in REFERENCE.items():
        got = counts[name]
        rel = (got - ref) / ref
        ok = abs(got - ref) <= max(REL_TOLERANCE * ref, half_unit)
        out[name] = {"design": quoted, "built": got, "deviation": round(rel, 4), "match": ok}
    return out


def _fmt(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def run(cfg: ExperimentConfig | None, args: InspectArgs | None = None) -> dict:
    """Prints and returns parameters per component, tokens per image and (optionally) the §1.4 comparison."""
    if cfg is None or cfg.model is None:
        raise ValueError("inspect needs an experiment with a model, e.g. experiment=align_1p5b")
    args = args or InspectArgs()
    counts, geometry = count_parameters(cfg.model)
    result: dict[str, object] = {"experiment": cfg.name, "parameters": counts, "geometry": geometry}
    lines = [f"{cfg.name}: parameters per component (meta device, no weights loaded)"]
    lines += [f"  {name:<30} {_fmt(n):>10}" for name, n in counts.items()]
    lines.append(
        f"  image {geometry['image_size']}² → latent {geometry['latent_shape']} → "
        f"{geometry['semantic_tokens_per_image']} semantic tokens → {geometry['llm_tokens_per_image']} LLM tokens"
    )
    if args.reference:
        table = compare(counts)
        result["design_1_4"] = table
        result["design_1_4_all_match"] = all(row["match"] for row in table.values())
        lines.append("  vs DESIGN.md §1.4 (within 2% or at the quoted precision):")
        lines += [
            f"  {name:<30} {row['design']:>8}  {row['deviation']:+.2%}  {'ok' if row['match'] else 'MISMATCH'}"
            for name, row in table.items()
        ]
    print("\n".join(lines))
    return result
