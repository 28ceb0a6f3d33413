"""Distributed strategies by name: FSDP auto-wrapped by the model's block classes, optional activation checkpointing.

`conf/trainer/*.yaml` picks a strategy by name (R6). Lightning's own names ("auto", "ddp", ...) pass through; the
names in `STRATEGIES` build a `CheersFSDPStrategy`:

- `cheers_fsdp`: FULL_SHARD, one FSDP unit per LLM decoder layer, SigLIP encoder layer and DiT block
  (`BLOCK_CLASSES`); the VAE, pixel decoder, embeddings, projector and heads stay in the root unit.
- `cheers_fsdp_ac`: the same plus activation checkpointing of those blocks (recompute in backward).

`use_orig_params=True` because frozen and trainable parameters share units (the frozen VAE sits in the root unit,
and the align stage freezes the LLM layers while training the embedding rows). Gradient clipping by norm, which
Lightning's FSDP precision plugin refuses, is routed to the root unit's `clip_grad_norm_` (the only correct norm of
sharded gradients), so `gradient_clip_val: 1.0` works unchanged. Checkpoints are consolidated ("full") so that
`init_from`, `resume_from` and `cheers_pl.export` read the same single file on any number of devices.

`train.py` passes `trainer_kwargs(cfg.trainer.kwargs())` to the Trainer; importing this module also
registers the names with Lightning's `StrategyRegistry`, so `Trainer(strategy="cheers_fsdp")` works too.
"""

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from torch import nn


def block_classes() -> set[type[nn.Module]]:
    """The repeated transformer blocks of every component: FSDP wrap units and checkpointing units."""
    from timm.models.vision_transformer import Block as TimmBlock
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

    from cheers_pl.model.flow_head import DiTBlock

    return {Qwen2DecoderLayer, SiglipEncoderLayer, TimmBlock, DiTBlock}


class CheersFSDPStrategy(FSDPStrategy):
    """`FSDPStrategy` with `clip_grad_by_norm` routed to the root FSDP module (global norm over all shards)."""

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        root = self.model

        def clip_grad_by_norm(optimizer: Any, clip_val: float) -> None:
            root.clip_grad_norm_(clip_val)

        self.precision_plugin.clip_grad_by_norm = clip_grad_by_norm


def _fsdp(activation_checkpointing: bool) -> dict[str, Any]:
    classes = block_classes()
    params: dict[str, Any] = dict(
        auto_wrap_policy=classes,
        sharding_strategy="FULL_SHARD",
        state_dict_type="full",
        use_orig_params=True,
        limit_all_gathers=True,
    )
    if activation_checkpointing:
        params["activation_checkpointing_policy"] = classes
    return params


STRATEGIES: dict[str, tuple[str, bool]] = {
    "cheers_fsdp": ("FSDP, one unit per LLM / SigLIP / DiT block", False),
    "cheers_fsdp_ac": ("FSDP, one unit per block, blocks activation-checkpointed", True),
}


def register() -> None:
    """Registers `STRATEGIES` with Lightning's `StrategyRegistry` (idempotent)."""
    for name, (description, checkpointing) in STRATEGIES.items():
        if name not in StrategyRegistry:
            StrategyRegistry.register(name, CheersFSDPStrategy, description=description, **_fsdp(checkpointing))


def build_strategy(name: str) -> Any:
    """The `strategy` argument of `lightning.Trainer`: a `CheersFSDPStrategy` for our names, else the string."""
    if name in STRATEGIES:
        return CheersFSDPStrategy(**_fsdp(STRATEGIES[name][1]))
    return name


def trainer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Trainer keyword arguments with the `strategy` name built by `build_strategy`."""
    return {**kwargs, "strategy": build_strategy(kwargs.get("strategy", "auto"))}


register()
