"""`align` stage: understanding alignment (paper stage I). Trains what `stage.trainable` names — with a pretrained
LLM and encoder, the projector, flow head, gate and the new token embeddings (`new_token_rows_only`)."""

from dataclasses import dataclass

from cheers_pl.stage.multimodal import MultimodalStage, MultimodalStageConfig


@dataclass
class AlignStageConfig(MultimodalStageConfig):
    """The align stage: no guidance dropout by default."""

    name: str = "align"


class AlignStage(MultimodalStage):
    """Understanding alignment on captions and QA (+ T2I through the flow head)."""
