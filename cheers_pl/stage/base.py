"""What every stage shares: config, `init_from`, declared trainable parameters, optimiser, saved config (R4, R5, R13).

A stage composes `self.model` (parameter names `model.<component>.*`, identical across stages so checkpoints carry
over) with objectives, sums and logs losses, and declares what trains by glob patterns over parameter names.
"""

import fnmatch
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from cheers_pl.checkpoint import CONFIG_KEY, config_yaml, read_checkpoint, upgrade_state_dict
from cheers_pl.data.text_tokenizer import load_text_tokenizer, vocab_fingerprint
from cheers_pl.model.weights import read_state, upgrade_parameter_name
from cheers_pl.optim import OptimConfig, build_optimizer

log = logging.getLogger(__name__)


@dataclass
class StageConfig:
    """Fields every stage has; each stage's config subclasses it."""

    name: str = "???"  # picks the stage (and this schema) from the registry in cheers_pl/stage/__init__.py
    trainable: list[str] = field(default_factory=list)  # globs over parameter names, e.g. "model.llm.*"
    init_from: str | None = None  # a previous stage's checkpoint or an exported dir: its `model.*` weights only
    init_shape_mismatch: str = "error"  # "error", or "skip" (keep this model's init for tensors whose shape changed)
    init_keep: list[str] = field(default_factory=list)  # globs of `model.*` tensors that keep their fresh init
    optim: OptimConfig = field(default_factory=OptimConfig)


def match_trainable(names: list[str], patterns: list[str]) -> set[str]:
    """The parameter names matched by any glob.

    Raises:
        ValueError: when a pattern matches no parameter (a typo must not silently freeze everything).
    """
    chosen: set[str] = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ValueError(f"stage.trainable pattern {pattern!r} matches no parameter; e.g. {names[:5]}")
        chosen.update(hits)
    return chosen


def _check_text_tokenizer(module: nn.Module, directory: Path) -> None:
    """An exported directory with its own text tokenizer (a text tower trained on its ids) must match the stage's."""
    own = getattr(module, "text_tokenizer", None)
    if own is None or not (directory / "tokenizer").is_dir():
        return
    theirs = load_text_tokenizer(str(directory / "tokenizer"))
    if vocab_fingerprint(theirs) != vocab_fingerprint(own):
        raise ValueError(
            f"stage.init_from={str(directory)!r} was trained with the text tokenizer in {directory / 'tokenizer'}, "
            "which maps text to other ids than this run's (data.text_tokenizer); set data.text_tokenizer to it"
        )


def load_model_weights(
    module: nn.Module, path: str, shape_mismatch: str = "error", keep: list[str] | None = None
) -> dict[str, list[str]]:
    """Loads the `model.*` weights of a checkpoint into `module` (lenient on missing keys).

    Args:
        module: the stage.
        path: the checkpoint, or an exported directory (`save_pretrained`, `convert-official`).
        shape_mismatch: "error", or "skip" to keep the module's own tensor where the shape changed (an ablation
            that changes a component's geometry, e.g. no token compression).
        keep: globs of tensor names that keep the module's own (fresh) init, e.g. ["model.vision.encoder.*"] to
            train a component again from scratch beside loaded ones.

    Returns:
        The `loaded`, `missing` (in module, not in checkpoint), `unexpected` (in checkpoint only), `skipped`
        (shape changed) and `kept` (matched by `keep`) keys.

    Raises:
        ValueError: unreadable checkpoint, no `model.*` key in common, a shape mismatch (naming the key), or a
            `keep` glob that matches no tensor.
    """
    if shape_mismatch not in ("error", "skip"):
        raise ValueError(f"stage.init_shape_mismatch must be 'error' or 'skip', got {shape_mismatch!r}")
    if Path(path).is_dir():  # an exported directory (save_pretrained, convert-official): the network's tensors
        _check_text_tokenizer(module, Path(path))
        state = {f"model.{upgrade_parameter_name(k)}": v for k, v in read_state(path).items()}
    else:
        ckpt = read_checkpoint(path, "stage.init_from")
        state = {k: v for k, v in upgrade_state_dict(ckpt.get("state_dict", ckpt)).items() if k.startswith("model.")}
    own = module.state_dict()
    common = [k for k in state if k in own]
    if not common:
        raise ValueError(f"stage.init_from={path!r}: no `model.*` weight matches this stage's model")
    skipped = [k for k in common if state[k].shape != own[k].shape]
    if skipped and shape_mismatch == "error":
        k = skipped[0]
        raise ValueError(
            f"stage.init_from: {k} has shape {tuple(state[k].shape)}, model has {tuple(own[k].shape)} "
            "(stage.init_shape_mismatch=skip keeps the new init for such tensors)"
        )
    if skipped:
        warnings.warn(
            f"stage.init_from: {len(skipped)} tensors changed shape and keep their init: {skipped[:4]}", stacklevel=2
        )
    kept = set()
    for pattern in keep or []:
        matched = {k for k in own if fnmatch.fnmatchcase(k, pattern)}
        if not matched:
            raise ValueError(f"stage.init_keep: {pattern!r} matches no tensor of this stage's model")
        kept |= matched
    common = [k for k in common if k not in skipped and k not in kept]
    module.load_state_dict({k: state[k] for k in common}, strict=False)
    own_model = [k for k in own if k.startswith("model.")]
    return {
        "loaded": common,
        "missing": [k for k in own_model if k not in state],
        "unexpected": [k for k in state if k not in own],
        "skipped": skipped,
        "kept": sorted(kept),
    }


def _outermost_frozen(root: nn.Module) -> list[nn.Module]:
    """The largest sub-modules of `root` that hold parameters, none of them trainable.

    One pass over the tree: asking every module for all of its parameters costs modules × parameters (`train()` took
    25 ms on the tiny preset that way, 11 ms now), and fitting loops such as the diagnosis's switch modes often.
    """
    status: dict[int, tuple[bool, bool]] = {}  # id(module) -> (holds parameters, holds a trainable one)

    def visit(module: nn.Module) -> tuple[bool, bool]:
        own = list(module.parameters(recurse=False))
        holds, trains = bool(own), any(p.requires_grad for p in own)
        for child in module.children():
            child_holds, child_trains = visit(child)
            holds, trains = holds or child_holds, trains or child_trains
        status[id(module)] = (holds, trains)
        return holds, trains

    def collect(module: nn.Module, out: list[nn.Module]) -> list[nn.Module]:
        for child in module.children():
            holds, trains = status[id(child)]
            if holds and not trains:
                out.append(child)
            else:
                collect(child, out)
        return out

    visit(root)
    return collect(root, [])


class StageModule(L.LightningModule):
    """Base LightningModule: subclasses build `self.model` and implement `training_step`/`validation_step`."""

    def __init__(self, cfg: Any) -> None:
        """`cfg`: the whole experiment config (`cheers_pl.config.ExperimentConfig`); `cfg.stage` is this stage's."""
        super().__init__()
        self.cfg = cfg
        self.stage_cfg: StageConfig = cfg.stage

    def setup_trainable(self) -> None:
        """Freezes everything, then unfreezes the declared globs and loads `init_from` (call at the end of
        the subclass's __init__)."""
        if self.stage_cfg.init_from:
            report = load_model_weights(
                self, self.stage_cfg.init_from, self.stage_cfg.init_shape_mismatch, self.stage_cfg.init_keep
            )
            log.info(
                "init_from %s: %d tensors loaded, %d missing (new here), %d unused, %d kept at their init",
                self.stage_cfg.init_from,
                len(report["loaded"]),
                len(report["missing"]),
                len(report["unexpected"]),
                len(report["kept"]),
            )
        self.declare_trainable(self.stage_cfg.trainable)

    def declare_trainable(self, patterns: list[str]) -> None:
        """Exactly the parameters matched by the globs train (e.g. a diagnosis that fits a subset)."""
        names = [n for n, _ in self.named_parameters()]
        chosen = match_trainable(names, patterns)
        for n, p in self.named_parameters():
            p.requires_grad_(n in chosen)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "StageModule":
        """Frozen sub-modules (no trainable parameter inside) stay in eval mode: no dropout, no statistics update."""
        super().train(mode)
        if mode:
            for module in _outermost_frozen(self):
                module.eval()  # recursive: covers every frozen module inside it
        return self

    def configure_optimizers(self) -> dict:
        total = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else 1
        optimizer, scheduler = build_optimizer(self.trainable_parameters(), self.stage_cfg.optim, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = config_yaml(self.cfg)
