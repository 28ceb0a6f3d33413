"""Training stages: LightningModules that orchestrate components and objectives (STYLE.md R4).

`STAGES` maps `stage.name` to (config dataclass, LightningModule class).
"""

from typing import Any

from cheers_pl.stage.align import AlignStage, AlignStageConfig
from cheers_pl.stage.generation import GenerationStage, GenerationStageConfig
from cheers_pl.stage.tokenizer import TokenizerStage, TokenizerStageConfig

STAGES: dict[str, tuple[type, type]] = {
    "tokenizer": (TokenizerStageConfig, TokenizerStage),
    "align": (AlignStageConfig, AlignStage),
    "generation": (GenerationStageConfig, GenerationStage),
}
STAGE_CONFIGS: dict[str, type] = {name: entry[0] for name, entry in STAGES.items()}


def build_stage(cfg: Any) -> Any:
    """Builds the LightningModule of `cfg.stage.name` from the whole experiment config."""
    name = cfg.stage.name
    if name not in STAGES:
        raise ValueError(f"stage.name={name!r} is not a registered stage; registered: {sorted(STAGES)}")
    return STAGES[name][1](cfg)
