"""Reusable transformer layers: attention, MLP, norms, RoPE, adaLN, timestep embeddings, masked mean pooling."""

from cheers_pl.model.layers.adaln import AdaLNZero, modulate
from cheers_pl.model.layers.attention import Attention
from cheers_pl.model.layers.mlp import SwiGLU
from cheers_pl.model.layers.norm import RMSNorm
from cheers_pl.model.layers.pooling import masked_mean
from cheers_pl.model.layers.rope import RotaryEmbedding1D, apply_rope
from cheers_pl.model.layers.timestep import TimestepEmbedder, sinusoidal_embedding

__all__ = [
    "AdaLNZero",
    "Attention",
    "RMSNorm",
    "RotaryEmbedding1D",
    "SwiGLU",
    "TimestepEmbedder",
    "apply_rope",
    "masked_mean",
    "modulate",
    "sinusoidal_embedding",
]
