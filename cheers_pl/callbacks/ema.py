"""EMA of the trainable weights, stored like them: whole on one device or under DDP, one shard per rank under FSDP.

Lightning's `EMAWeightAveraging` deep-copies the whole LightningModule into an `AveragedModel` before the strategy
wraps it: an unsharded fp32 copy of every parameter and buffer on every rank (+11 GB at full size), and under FSDP
(`use_orig_params`, parameters are flat 1-D shard views after wrapping) its updates no longer line up with the
parameters at all; its docstring says sharded models are not supported. `EMACallback` keeps one fp32 tensor per
*trainable* parameter shaped like what this rank holds of it: the full tensor without sharding, this rank's slice of
the flat shard under FSDP (empty where the rank holds none of it). Updates are elementwise, so the shards equal the
slices of an unsharded EMA exactly. Frozen parameters and buffers are not averaged: they keep their current values.

Semantics follow Lightning's (same update formula `decay·ema + (1 − decay)·w`, the first update copies the weights,
`update_every_n_steps`, `update_starting_at_step`): validation during fit runs on the EMA weights; a checkpoint's
`state_dict` holds the EMA weights (so `init_from`, `evaluate`, `answer`, `sample` and `export` use them) and
`current_model_state` the trained ones, from which `resume_from` continues. Under FSDP both are consolidated by the
strategy's own full-state-dict gather (the EMA is swapped into the parameter shards for the gather and swapped back),
so the file is the same single file as without sharding. A step skipped by `NonFiniteGuard` does not update the EMA.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn

from cheers_pl.callbacks.nonfinite import step_was_skipped
from cheers_pl.strategies import reshard_idle_units

log = logging.getLogger(__name__)


@dataclass
class EMAConfig:
    """Decay and update schedule of the EMA."""

    decay: float = 0.999
    update_every_n_steps: int = 1
    update_starting_at_step: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in (0, 1), got {self.decay}")
        if self.update_every_n_steps < 1:
            raise ValueError(f"callbacks.ema.update_every_n_steps must be >= 1, got {self.update_every_n_steps}")


def trainable(pl_module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the EMA averages, in a fixed order (under FSDP: this rank's shard views)."""
    return [p for p in pl_module.parameters() if p.requires_grad]


class EMACallback(L.Callback):
    """Exponential moving average of the trainable parameters, sharded like them."""

    def __init__(self, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.ema: list[torch.Tensor] | None = None
        self.num_updates = 0
        self.latest_update_step = 0
        self._stash: dict[int, torch.Tensor] | None = None  # weights of another dtype while the EMA is swapped in

    @property
    def ema_bytes(self) -> int:
        """Bytes of averaged weights held by this rank."""
        return sum(e.numel() * e.element_size() for e in self.ema or [])

    def _capture(self, pl_module: L.LightningModule) -> None:
        self.ema = [p.detach().float().clone() for p in trainable(pl_module)]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = trainable(pl_module)
        if self.ema is None:
            self._capture(pl_module)
        else:  # restored before the strategy moved the model to its device (single device, DDP)
            assert [e.shape for e in self.ema] == [p.shape for p in params], "EMA restored for other parameters"
            self.ema = [e.to(p.device) for e, p in zip(self.ema, params, strict=True)]
        total = sum(p.numel() for p in params)
        log.info("EMA: %.1f MB on rank %d (%d trainable elements here)", self.ema_bytes / 2**20,
                 trainer.global_rank, total)  # fmt: skip

    def should_update(self, step_idx: int) -> bool:
        """Lightning's `EMAWeightAveraging.should_update` for a 0-based optimizer step index."""
        start = self.cfg.update_starting_at_step
        return (start is None or step_idx >= start) and step_idx % self.cfg.update_every_n_steps == 0

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        if step <= self.latest_update_step or not self.should_update(step - 1) or step_was_skipped(trainer):
            return
        assert self.ema is not None
        decay = self.cfg.decay
        for e, p in zip(self.ema, trainable(pl_module), strict=True):
            if self.num_updates == 0:
                e.copy_(p.detach())
            else:  # torch.optim.swa_utils.get_ema_avg_fn, term by term: equal to Lightning's EMA bit for bit
                e.copy_(decay * e + (1 - decay) * p.detach().float())
        self.num_updates += 1
        self.latest_update_step = step

    # ---- validation on the EMA weights ----

    def _swap(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Exchanges the EMA and the weights in place (exact: the weights are fp32 masters in every precision we
        train with; a lower-precision weight is stashed and restored instead, so the EMA never loses bits)."""
        assert self.ema is not None
        if isinstance(trainer.strategy, FSDPStrategy) and trainer.strategy.model is not pl_module:
            reshard_idle_units(trainer.strategy.model)  # else a gathered copy left by validation shadows the shards
        stash = self._stash
        self._stash = {} if stash is None else None
        for i, (e, p) in enumerate(zip(self.ema, trainable(pl_module), strict=True)):
            if p.dtype != e.dtype:
                if stash is None:
                    self._stash[i] = p.detach().clone()
                    p.detach().copy_(e)
                else:
                    p.detach().copy_(stash[i])
                continue
            current = p.detach().clone()
            p.detach().copy_(e)
            e.copy_(current)

    def _averaging(self, trainer: L.Trainer) -> bool:
        return self.ema is not None and self.num_updates > 0 and trainer.state.fn == TrainerFn.FITTING

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaging(trainer):
            self._swap(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaging(trainer):
            self._swap(trainer, pl_module)

    # ---- checkpoints: state_dict = EMA weights, current_model_state = trained weights ----

    def _with_ema(self, trainer: L.Trainer, pl_module: L.LightningModule, fn: Callable[[], dict]) -> dict:
        self._swap(trainer, pl_module)
        try:
            return fn()
        finally:
            self._swap(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.ema is None or not self.num_updates:
            return  # no average yet: the EMA equals the current weights
        if isinstance(trainer.strategy, FSDPStrategy):  # the strategy's own gather of the (swapped-in) shards
            if trainer.strategy.root_device.type == "cpu":  # "offload to CPU" copies nothing on CPU: the weights'
                # gathered tensors alias unsharded buffers that the EMA gather reuses, so copy them out first
                checkpoint["state_dict"] = {k: v.clone() for k, v in checkpoint["state_dict"].items()}
            averaged = self._with_ema(trainer, pl_module, trainer.strategy.lightning_module_state_dict)
        else:
            ema_of = {id(p): e for p, e in zip(trainable(pl_module), self.ema, strict=True)}
            # every name of a tied parameter (embedding = LM head) gets the average, or loading would undo it
            named = pl_module.named_parameters(remove_duplicate=False)
            by_name = {n: ema_of[id(p)] for n, p in named if id(p) in ema_of}
            averaged = {k: by_name[k].to(v.dtype) if k in by_name else v for k, v in checkpoint["state_dict"].items()}
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = averaged

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if "current_model_state" not in checkpoint:
            return  # written before the first EMA update (or without EMA): the average starts from these weights
        self._capture(pl_module)  # the strategy has just loaded `state_dict`, the EMA, into the (sharded) weights
        load_full_state_dict(trainer, pl_module, checkpoint["current_model_state"])

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "latest_update_step": self.latest_update_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.num_updates = int(state_dict["num_updates"])
        self.latest_update_step = int(state_dict["latest_update_step"])


def load_full_state_dict(trainer: L.Trainer, pl_module: L.LightningModule, state: dict) -> None:
    """Loads an unsharded LightningModule state dict into the model, through FSDP's full-state-dict load if wrapped."""
    if isinstance(trainer.strategy, FSDPStrategy) and trainer.strategy.model is not pl_module:
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = trainer.strategy.model
        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=False)
        with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
            root.load_state_dict(state)
    else:
        pl_module.load_state_dict(state)
