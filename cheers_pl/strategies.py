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

On CPU (gloo; the 2-rank CPU tests) the model is wrapped with `device_id=cpu`: Lightning passes the device index,
which is None on CPU, and FSDP then refuses to run without an accelerator. And the full optimizer state is gathered
one state tensor at a time there: torch's `_allgather_orig_param_states` reuses one all-gather buffer for every state
(`exp_avg`, `exp_avg_sq`) and hands out views of it, which only the offload `.cpu()` copies on a GPU; on CPU every
moment would come back as the last one gathered (AdamW's m saved as v), and a resumed run would diverge.

`train.py` passes `trainer_kwargs(cfg.trainer.kwargs())` to the Trainer; importing this module also
registers the names with Lightning's `StrategyRegistry`, so `Trainer(strategy="cheers_fsdp")` works too.
"""

from typing import Any

import torch
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

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type == "cpu":
            from torch.distributed.fsdp import FullyShardedDataParallel

            kwargs = {k: v for k, v in self.kwargs.items() if k != "auto_wrap_policy"}
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                auto_wrap_policy=self.kwargs.get("auto_wrap_policy"),
                **kwargs,
            )
            self.kwargs = kwargs  # wrapped already: Lightning's setup then only adds activation checkpointing
        return super()._setup_model(model)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        inner = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps it
        states = list(inner.state.values())
        names = sorted({k for st in states for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0})
        if self.root_device.type != "cpu" or len(names) <= 1:
            return super().optimizer_state(optimizer)
        whole = [dict(st) for st in states]
        merged: dict[str, Any] | None = None
        try:
            for name in names:  # one tensor state per gather: no two states share the gather buffer
                for st, full in zip(states, whole, strict=True):
                    st.clear()
                    st.update({k: v for k, v in full.items() if k == name or not (torch.is_tensor(v) and v.dim() > 0)})
                part = super().optimizer_state(optimizer)
                if merged is None:
                    merged = part
                else:
                    for key, st in part.get("state", {}).items():
                        merged["state"][key][name] = st[name]
        finally:
            for st, full in zip(states, whole, strict=True):
                st.clear()
                st.update(full)
        assert merged is not None
        return merged


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


def reshard_idle_units(model: nn.Module) -> None:
    """Frees every FSDP unit's gathered parameters that outlived a forward (before weights are edited in place).

    FSDP does not reshard the root unit after a forward without backward (evaluation), and the next forward reuses
    that gathered copy instead of gathering the shards again. Whoever edits the shards in place in between (the EMA
    swap around validation and checkpoints) must drop it first, or the next forward and the next full state dict see
    the old values. FSDP1 has no public call for this; `_reshard` is what its own post-backward uses.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp._runtime_utils import _reshard

    for unit in FullyShardedDataParallel.fsdp_modules(model):
        handle = unit._handle
        if handle is not None and handle.uses_sharded_strategy and not handle.needs_unshard():
            _reshard(unit, handle, free_unsharded_flat_param=True)
