"""Diagnosis 1d, where the time goes: the share of a training step spent in each component, measured in one run.

A few training steps of a stage are run on real batches of its experiment's data; forward hooks time the VAE
encoder and decoder, the pixel decoder D, the semantic encoder, the compressor, the LLM, the flow head and the text
tower; the rest of the forward pass (losses, embedding, masks) is "other"; backward, the optimizer step and the
wait for the next batch are timed around the calls. Shares are of the summed wall time of the timed steps (the first
`warmup` steps are dropped). CPU timing is synchronous, so hook intervals are the components' own times; a module
that runs inside another (D inside the vision tokenizer) is timed on its own and not again in its parent.
"""

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cheers_pl.optim import build_optimizer

# component name -> attribute paths below the stage's `model` (each that exists is timed)
COMPONENTS: dict[str, tuple[str, ...]] = {
    "vae_encode": ("vision.vae.autoencoder.encoder",),
    "vae_decode": ("vision.vae.autoencoder.decoder",),
    "pixel_decoder": ("vision.pixel_decoder",),
    # the stages call the encoder's blocks through forward_embeddings, never its forward: time the blocks (HF SigLIP's
    # `model.encoder`, timm's `model.blocks`) or the latent embedding; the patch embedding counts as other_forward
    "semantic_encoder": ("vision.encoder.model.encoder", "vision.encoder.model.blocks", "vision.latent_embed"),
    "compressor": ("vision.compressor",),
    "llm": ("llm",),
    "flow_head": ("flow_head",),
    "text_tower": ("contrastive",),
}


def _module(root: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


class ComponentTimer:
    """Forward pre/post hooks that add the wall time of each component's forward calls to `seconds`."""

    def __init__(self, model: nn.Module) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._handles = []
        for name, paths in COMPONENTS.items():
            for path in paths:
                module = _module(model, path)
                if module is not None:
                    self._attach(name, module)

    def _attach(self, name: str, module: nn.Module) -> None:
        started: list[float] = []

        def pre(*_: Any) -> None:
            started.append(time.perf_counter())

        def post(*_: Any) -> None:
            self.seconds[name] += time.perf_counter() - started.pop()

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def reset(self) -> None:
        self.seconds.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def profile_stage(stage: Any, batches: Iterator, steps: int = 6, warmup: int = 2) -> dict[str, Any]:
    """Times `steps` training steps of `stage` (a built StageModule) on `batches` (an iterator of its batches).

    Returns:
        {"step_s": mean seconds per step, "samples_per_s", "share": {component: fraction of the step}, "seconds":
        {component: seconds per step}} with components as in `COMPONENTS` plus other_forward, backward,
        optimizer and data.
    """
    stage.train()
    optimizer, _ = build_optimizer(stage.trainable_parameters(), stage.stage_cfg.optim, total_steps=1000)
    timer = ComponentTimer(stage.model)
    totals: dict[str, float] = defaultdict(float)
    samples = 0
    try:
        for i in range(warmup + steps):
            if i == warmup:
                timer.reset()
                totals.clear()
                samples = 0
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = stage.training_step(batch, i)
            t2 = time.perf_counter()
            if loss is not None:
                loss.backward()
            t3 = time.perf_counter()
            optimizer.step()
            t4 = time.perf_counter()
            totals["data"] += t1 - t0
            totals["forward"] += t2 - t1
            totals["backward"] += t3 - t2
            totals["optimizer"] += t4 - t3
            samples += len(batch)
    finally:
        timer.remove()
    components = {k: v for k, v in timer.seconds.items() if v > 0}
    seconds = {**components, "other_forward": max(0.0, totals["forward"] - sum(components.values()))}
    seconds.update(backward=totals["backward"], optimizer=totals["optimizer"], data=totals["data"])
    total = sum(seconds.values())
    return {
        "steps": steps,
        "batch_size": samples // steps,
        "step_s": round(total / steps, 4),
        "samples_per_s": round(samples / total, 1),
        "seconds_per_step": {k: round(v / steps, 4) for k, v in seconds.items()},
        "share": {k: round(v / total, 3) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])},
        "torch_threads": torch.get_num_threads(),
    }
