"""`generation` stage: joint understanding + generation + text training (paper stages II–IV are its configs)."""

from dataclasses import dataclass

from cheers_pl.stage.multimodal import MultimodalStage, MultimodalStageConfig


@dataclass
class GenerationStageConfig(MultimodalStageConfig):
    """The generation stage: 20% of generation rows lose their prompt to `<no_mean>` (guidance training)."""

    name: str = "generation"
    cond_drop_prob: float = 0.2


class GenerationStage(MultimodalStage):
    """Cascaded generation trained jointly with understanding and text (data mixture from `data.task_weights`)."""
