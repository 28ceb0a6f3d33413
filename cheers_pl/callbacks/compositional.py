"""GenEval-style compositional generation accuracy as a validation callback.

At the end of an active validation run the stage generates the held-out prompt set of
`cheers_pl.eval.geneval_prompts` (built from `cfg.synthetic` or read from `cfg.prompts_file`) through its public
`generate_images`, the images are scored by the detector-free parser (`cheers_pl.eval.geneval`), and
`val/geneval_<category>` for the six categories, `val/geneval_overall` (mean of the categories, as GenEval) and
`val/geneval_held_out` / `val/geneval_in_distribution` (images of prompts with / without a held-out composition)
are logged. The protocol of the last run (prompts hash, seeds, images per prompt, steps, guidance) is kept in
`last_result`.

Under data parallelism the chunks of prompts are split over ranks (`run_geneval`'s rank rule, so the images do not
depend on the number of ranks), the per-category counts are summed across ranks, and ranks with one chunk fewer
run one extra, discarded generation so that every rank makes the same number of forward passes (FSDP).

References:
    Ghosh et al., "GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment", 2023.
    Cheers (arXiv 2603.12793) — DESIGN.md §5.

Legend: B prompts per chunk, H/W image size.
"""

from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch

from cheers_pl.callbacks.common import PeriodicValidationCallback, check_positive
from cheers_pl.data.processing import to_uint8
from cheers_pl.data.synthetic_scene import SyntheticConfig
from cheers_pl.eval.geneval import CATEGORIES, GROUPS, accuracies, load_prompts, make_prompts, run_geneval
from cheers_pl.eval.geneval_prompts import GenEvalPrompt

_KEYS = (*CATEGORIES, *GROUPS)


@dataclass
class CompositionalConfig:
    """GenEval-style callback settings; defaults are the tiny preset."""

    every_n_val: int = 1  # score on the 1st and then every n-th validation run
    per_category: int = 4  # prompts per category (full size: 64-100; GenEval has 553 prompts in all)
    images_per_prompt: int = 1  # images per prompt and seed (GenEval: 4)
    seed: int = 0  # generation seed (chunk i uses seed * 100003 + i, see run_geneval)
    prompt_seed: int = 0  # seed of `make_prompts`
    prompts_file: str | None = None  # saved prompts JSONL (data/prompts/geneval_tiny.jsonl); overrides the two above
    num_steps: int | None = None  # sampling steps; None = the stage's setting (paper: 80)
    guidance_scale: float | None = None  # CFG scale; None = the stage's setting (paper: 9.5)
    batch_size: int = 16  # prompts per `generate_images` call
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # the world the prompts/parser use (= data's)

    def __post_init__(self) -> None:
        for name in ("every_n_val", "per_category", "images_per_prompt", "batch_size"):
            check_positive(f"callbacks.compositional.{name}", getattr(self, name))
        if self.seed < 0 or self.prompt_seed < 0:
            raise ValueError(
                f"callbacks.compositional.seed/prompt_seed must be >= 0, got {self.seed}, {self.prompt_seed}"
            )
        if isinstance(self.synthetic, dict):  # plain construction from a dict (OmegaConf builds the dataclass)
            self.synthetic = SyntheticConfig(**self.synthetic)


class CompositionalCallback(PeriodicValidationCallback):
    """Logs `val/geneval_*` at the end of an active validation run (see the module docstring)."""

    def __init__(self, cfg: CompositionalConfig) -> None:
        super().__init__(cfg.every_n_val)
        self.cfg = cfg
        self.prompts = self._prompts(cfg)
        self.last_result: dict[str, Any] | None = None

    @staticmethod
    def _prompts(cfg: CompositionalConfig) -> list[GenEvalPrompt]:
        if cfg.prompts_file is None:
            return make_prompts(cfg.synthetic, cfg.per_category, cfg.prompt_seed)
        try:
            prompts = load_prompts(cfg.prompts_file)
        except ValueError as err:
            raise ValueError(f"callbacks.compositional.prompts_file: {err}") from err
        if not prompts:
            raise ValueError(f"callbacks.compositional.prompts_file {cfg.prompts_file!r} holds no prompts")
        return prompts

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        self.active = False
        cfg = self.cfg
        sampling = {"num_steps": cfg.num_steps, "guidance_scale": cfg.guidance_scale}

        def generate_fn(texts: list[str], seed: int) -> torch.Tensor:
            return to_uint8(pl_module.generate_images(texts, seed=seed, **sampling).images)

        rank, world = trainer.global_rank, max(trainer.world_size, 1)
        with torch.no_grad():
            result = run_geneval(
                generate_fn,
                self.prompts,
                cfg.synthetic,
                images_per_prompt=cfg.images_per_prompt,
                seeds=(cfg.seed,),
                batch_size=cfg.batch_size,
                rank=rank,
                world_size=world,
            )
            num_chunks = -(-len(self.prompts) * cfg.images_per_prompt // cfg.batch_size)
            own = len(range(rank, num_chunks, world))
            for _ in range(-(-num_chunks // world) - own):  # keep forward passes equal across ranks
                generate_fn([self.prompts[0].text], cfg.seed)
        local = torch.tensor([result["counts"][k] for k in _KEYS], dtype=torch.float64, device=pl_module.device)
        total = trainer.strategy.reduce(local, reduce_op="sum").round().long().tolist()
        scores = accuracies({k: total[i] for i, k in enumerate(_KEYS)})
        for key, value in scores.items():
            pl_module.log(f"val/geneval_{key}", float(value), sync_dist=False)
        protocol = result["protocol"] | {"num_images": sum(t for _, t in total[: len(CATEGORIES)]), **sampling}
        self.last_result = {"scores": scores, "counts": dict(zip(_KEYS, total, strict=True)), "protocol": protocol}
