"""Plan, check and run the conversion of a released-layout checkpoint into our state dict (and back).

A plan accounts for every released tensor: mapped to exactly one of ours (`names.official_name`, inverted), or
dropped with a stated reason, or unknown; and for every tensor of ours: filled or missing. Unknown or missing names
are a `ValueError` listing them. `check_index` needs only `config.json` and the names (the index holds no shapes):
it builds the model on the meta device and checks that 2 bytes × the elements of the accounted tensors come within
1 MiB of the index's `total_size` (the release is bf16; measured on the release: 0 bytes off).
`convert` reads the tensors in the dtype they are stored in (bf16 for the release: no fp32 copy is made) and decides
whether the LM head is tied by comparing `lm_head.weight` with the embedding.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

from cheers_pl.model.cheers import CheersConfig, CheersModel
from cheers_pl.official.config import official_cheers_config
from cheers_pl.official.names import EMBED, LM_HEAD, TIED_HEAD_REASON, TRANSFORMS, dropped_reason, official_name

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BYTES_TOLERANCE = 2**20
OURS_LM_HEAD = "llm.hf.lm_head.weight"


@dataclass
class ConversionPlan:
    """Where every released tensor goes and whether every tensor of ours is filled."""

    cfg: CheersConfig
    mapped: dict[str, tuple[str, str]] = field(default_factory=dict)  # released -> (ours, transform kind)
    dropped: dict[str, str] = field(default_factory=dict)  # released -> reason
    unknown: list[str] = field(default_factory=list)  # released names no rule maps
    missing: list[str] = field(default_factory=list)  # our names no released tensor fills
    expected: dict[str, torch.Size] = field(default_factory=dict)  # our name -> shape (meta build)

    @property
    def shuffle_positions(self) -> int:
        return self.cfg.vision.compression**2

    def raise_if_incomplete(self, source: str) -> None:
        """Raises: ValueError listing the unknown and missing names."""
        if self.unknown or self.missing:
            raise ValueError(
                f"{source}: {len(self.unknown)} released tensors map to nothing {self.unknown[:10]}, "
                f"{len(self.missing)} of ours are not filled {self.missing[:10]}"
            )

    def summary(self, total: int) -> dict:
        return {
            "tensors": total,
            "mapped": len(self.mapped),
            "dropped": {reason: sorted(n for n, r in self.dropped.items() if r == reason) for reason in self.reasons},
            "unknown": self.unknown,
            "missing": self.missing,
            "accounted_for": len(self.mapped) + len(self.dropped),
        }

    @property
    def reasons(self) -> list[str]:
        return sorted(set(self.dropped.values()))


def expected_tensors(cfg: CheersConfig) -> dict[str, torch.Size]:
    """Shapes of our state dict for `cfg`, built on the meta device (tied parameters under every name)."""
    with torch.device("meta"):
        model = CheersModel(cfg)
    return {name: t.shape for name, t in model.state_dict(keep_vars=True).items()}


def plan_conversion(released_names: Iterable[str], cfg: CheersConfig) -> ConversionPlan:
    """The plan for the released `released_names` into a model of `cfg`."""
    plan = ConversionPlan(cfg, expected=expected_tensors(cfg))
    levels = len(cfg.vision.vae.block_out_channels)
    ours_of: dict[str, tuple[str, str]] = {}
    for ours in plan.expected:
        if ours == OURS_LM_HEAD and cfg.llm.tie_word_embeddings:
            continue  # the same tensor as the embedding
        target = official_name(ours, levels)
        if target is None:
            plan.missing.append(ours)
        else:
            ours_of[target[0]] = (ours, target[1])
    released = list(released_names)
    for name in released:
        if name in ours_of:
            plan.mapped[name] = ours_of[name]
        elif name == LM_HEAD and cfg.llm.tie_word_embeddings:
            plan.dropped[name] = TIED_HEAD_REASON
        elif (reason := dropped_reason(name)) is not None:
            plan.dropped[name] = reason
        else:
            plan.unknown.append(name)
    present = set(released)
    plan.missing += sorted(ours for official, (ours, _) in ours_of.items() if official not in present)
    return plan


def _dropped_numel(plan: ConversionPlan) -> dict[str, int]:
    """Elements of the dropped released tensors, from their official shapes (SigLIP's pooling head on meta)."""
    enc = plan.cfg.vision.encoder
    siglip = SiglipVisionConfig(hidden_size=enc.dim, intermediate_size=enc.mlp_dim, num_attention_heads=enc.num_heads)
    with torch.device("meta"):
        head = {f"model.vision_representation.head.{k}": v.numel() for k, v in
                SiglipMultiheadAttentionPoolingHead(siglip).state_dict().items()}  # fmt: skip
    head[LM_HEAD] = plan.expected["llm.hf.model.embed_tokens.weight"].numel()
    unknown = [n for n in plan.dropped if n not in head]
    assert not unknown, f"no shape rule for dropped tensors {unknown}"
    return {n: head[n] for n in plan.dropped}


def read_names(src: Path) -> tuple[list[str], dict]:
    """The released tensor names of a checkpoint directory (index or single file) and the index metadata."""
    if (src / INDEX_FILE).is_file():
        index = json.loads((src / INDEX_FILE).read_text())
        return list(index["weight_map"]), index.get("metadata", {})
    if (src / WEIGHTS_FILE).is_file():
        with safe_open(str(src / WEIGHTS_FILE), framework="pt") as f:
            return list(f.keys()), {}
    raise ValueError(f"src={str(src)!r}: neither {INDEX_FILE} nor {WEIGHTS_FILE} found")


def read_config(src: Path) -> dict:
    path = src / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"src={str(src)!r}: no {CONFIG_FILE}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def check_index(src: str | Path) -> dict:
    """The names-only check of a released checkpoint directory (`config.json` + index): a report dict.

    Raises:
        ValueError: unknown or missing names, or a byte count more than 1 MiB off the index's `total_size`.
    """
    src = Path(src)
    names, metadata = read_names(src)
    cfg = official_cheers_config(read_config(src), names, tie_word_embeddings=False)
    plan = plan_conversion(names, cfg)
    plan.raise_if_incomplete(str(src))
    mapped = sum(plan.expected[ours].numel() for ours, _ in plan.mapped.values())
    dropped = sum(_dropped_numel(plan).values())
    report = plan.summary(len(names))
    report.update(
        elements_mapped=mapped,
        elements_dropped=dropped,
        bytes_bf16=2 * (mapped + dropped),
        lm_head="mapped untied (check_only reads names; convert compares it with the embedding and ties if equal)",
    )
    if "total_size" in metadata:
        diff = report["bytes_bf16"] - int(metadata["total_size"])
        report.update(index_total_size=int(metadata["total_size"]), bytes_difference=diff)
        if abs(diff) > BYTES_TOLERANCE:
            raise ValueError(f"{src / INDEX_FILE}: 2 bytes × elements = {report['bytes_bf16']} is {diff} bytes off")
    return report


class _Reader:
    """Reads released tensors by name from the index's shards or the single file, as stored."""

    def __init__(self, src: Path) -> None:
        if (src / INDEX_FILE).is_file():
            self.where = {k: src / v for k, v in json.loads((src / INDEX_FILE).read_text())["weight_map"].items()}
        else:
            with safe_open(str(src / WEIGHTS_FILE), framework="pt") as f:
                self.where = {k: src / WEIGHTS_FILE for k in f.keys()}
        self._open: dict[Path, object] = {}

    def __call__(self, name: str) -> torch.Tensor:
        path = self.where[name]
        if path not in self._open:
            self._open[path] = safe_open(str(path), framework="pt")
        return self._open[path].get_tensor(name)


def convert(src: str | Path) -> tuple[CheersConfig, dict[str, torch.Tensor], ConversionPlan]:
    """Converts a released-layout checkpoint directory: (our config, our state dict, the plan).

    Raises:
        ValueError: unknown or missing names, or a tensor whose shape does not fit the config.
    """
    src = Path(src)
    names, _ = read_names(src)
    read = _Reader(src)
    tied = LM_HEAD in names and EMBED in names and torch.equal(read(LM_HEAD), read(EMBED))
    cfg = official_cheers_config(read_config(src), names, tie_word_embeddings=tied or LM_HEAD not in names)
    plan = plan_conversion(names, cfg)
    plan.raise_if_incomplete(str(src))
    state, bad = {}, []
    for name, (ours, kind) in plan.mapped.items():
        tensor = TRANSFORMS[kind][0](read(name), plan.shuffle_positions).contiguous()
        if tensor.shape != plan.expected[ours]:
            bad.append(f"{name} {tuple(tensor.shape)} -> {ours} {tuple(plan.expected[ours])}")
        state[ours] = tensor
    if bad:
        raise ValueError(f"{src}: {len(bad)} tensors do not fit config.json: {bad[:10]}")
    return cfg, state, plan


def to_official_state(state: dict[str, torch.Tensor], cfg: CheersConfig) -> dict[str, torch.Tensor]:
    """Our state dict → the released layout (the inverse of `convert`; dropped tensors are not recreated; a tied
    LM head is written as `lm_head.weight` too, as the release stores it)."""
    levels, k = len(cfg.vision.vae.block_out_channels), cfg.vision.compression**2
    out = {}
    for ours, tensor in state.items():
        target = official_name(ours, levels)
        if target is None:
            raise ValueError(f"{ours}: no released counterpart")
        out[target[0]] = TRANSFORMS[target[1]][1](tensor, k).contiguous()
    if cfg.llm.tie_word_embeddings and LM_HEAD not in out:
        out[LM_HEAD] = out[EMBED]
    return out
