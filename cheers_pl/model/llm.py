"""LLM backbone: a Qwen2 causal LM run on embeddings under an interleaved text / image-block mask.

Cheers feeds one sequence of text-token embeddings and image-token embeddings to Qwen2.5; attention is causal
except bidirectional inside each image block (masks: :mod:`cheers_pl.model.attention_mask`). The final normed
hidden states at text positions go through the LM head; those at image positions feed the flow head.

How transformers 5.x takes our mask (read from ``masking_utils.py`` / ``modeling_qwen2.py`` of 5.24): a 4-D
``attention_mask`` skips all mask construction and reaches the attention function unchanged, with or without a
KV cache (the cache is only used to size masks built from 2-D inputs). ``sdpa`` hands it to
``F.scaled_dot_product_attention``, where a bool mask means True = attend. ``eager`` ADDS the mask to the scores,
so a bool mask would be wrong there: :class:`LLM` converts it to an additive float mask (0 / dtype min) for eager.
The mask must cover all keys (cached + new), so with a cache it is ``B×1×Q×(cache_len+Q)``.

Full size (``cheers_1p5b``): Qwen2.5-1.5B-Instruct, width 1536, 28 layers, 12 heads, 2 KV heads, mlp 8960,
RoPE θ 1e6, vocab 151936. Its ``config.json`` sets ``tie_word_embeddings: true`` (1.54B parameters with the
embedding counted once). The released Cheers checkpoint carries an UNTIED LM head (+0.23B = 151936·1536,
DESIGN.md §1.4): set ``tie_word_embeddings=False`` to untie on load (the head starts as a copy of the embedding).

References:
    Cheers, arXiv 2603.12793, §LLM backbone; Qwen2.5 technical report, arXiv 2412.15115.

Shape legend:
    B batch, L sequence length of this call (new tokens), K keys = cached + new tokens, D model width, V vocab.
"""

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Cache, DynamicCache, Qwen2Config, Qwen2ForCausalLM

_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class LLMConfig:
    """Qwen2 backbone configuration; defaults are the tiny preset, comments give the 1.5B values."""

    pretrained: str | None = None  # local dir or hub id, e.g. "Qwen/Qwen2.5-1.5B-Instruct"; None = random init
    vocab_size: int = 512  # 151936
    dim: int = 128  # 1536
    num_layers: int = 2  # 28
    num_heads: int = 4  # 12
    num_kv_heads: int = 2  # 2
    mlp_dim: int = 512  # 8960
    rope_theta: float = 1e6  # 1e6
    max_position: int = 2048  # 32768
    tie_word_embeddings: bool = True  # Qwen2.5-1.5B: True; the released Cheers checkpoint: False (untied head)
    rms_norm_eps: float = 1e-6  # 1e-6
    attn_implementation: str = "sdpa"  # "sdpa" | "eager"
    gradient_checkpointing: bool = False  # recompute decoder layers in backward (memory for the 1.5B preset)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads", "mlp_dim", "max_position"):
            if getattr(self, name) < 1:
                raise ValueError(f"LLMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"LLMConfig.dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise ValueError(f"LLMConfig head width dim/num_heads={self.dim // self.num_heads} must be even (RoPE)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LLMConfig.num_heads={self.num_heads} must be divisible by num_kv_heads={self.num_kv_heads}"
            )
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError(f"LLMConfig.rope_theta={self.rope_theta} and rms_norm_eps={self.rms_norm_eps} must be > 0")
        if self.attn_implementation not in _ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"LLMConfig.attn_implementation={self.attn_implementation!r} must be one of {_ATTN_IMPLEMENTATIONS}"
            )

    def to_qwen2_config(self) -> Qwen2Config:
        """The equivalent ``transformers.Qwen2Config`` (random-init path)."""
        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.dim,
            intermediate_size=self.mlp_dim,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            tie_word_embeddings=self.tie_word_embeddings,
            rms_norm_eps=self.rms_norm_eps,
        )


@dataclass
class LLMOutput:
    """Result of :meth:`LLM.forward`."""

    hidden_BLD: torch.Tensor  # final hidden states, after the final RMSNorm
    logits_BLV: torch.Tensor | None  # None when compute_logits=False
    past_key_values: Cache | None  # the (updated) KV cache when use_cache=True


# Architecture fields that must agree between LLMConfig and a pretrained checkpoint (ours -> Qwen2Config).
_STRICT_FIELDS = {
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "mlp_dim": "intermediate_size",
}


class LLM(nn.Module):
    """Qwen2 causal LM wrapper that takes embeddings, a 4-D bool mask and explicit positions.

    The underlying ``Qwen2ForCausalLM`` is ``self.hf``; parameter names are ``hf.model.embed_tokens.weight``,
    ``hf.model.layers.<i>.*``, ``hf.model.norm.weight`` and ``hf.lm_head.weight`` (same tensor as the embedding
    when tied).
    """

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.pretrained is None:
            self.hf = Qwen2ForCausalLM._from_config(cfg.to_qwen2_config(), attn_implementation=cfg.attn_implementation)
        else:
            self.hf = Qwen2ForCausalLM.from_pretrained(
                cfg.pretrained, attn_implementation=cfg.attn_implementation, dtype=torch.float32
            )
            self._check_pretrained_config()
        if cfg.gradient_checkpointing:
            self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def _check_pretrained_config(self) -> None:
        """Fail on architecture mismatches with the checkpoint; warn on soft ones; untie the head if asked."""
        hf_cfg, cfg = self.hf.config, self.cfg
        for ours, theirs in _STRICT_FIELDS.items():
            if getattr(cfg, ours) != getattr(hf_cfg, theirs):
                raise ValueError(
                    f"LLMConfig.{ours}={getattr(cfg, ours)} disagrees with {theirs}={getattr(hf_cfg, theirs)} "
                    f"of the checkpoint at pretrained={cfg.pretrained!r}"
                )
        soft = {
            "rope_theta": (cfg.rope_theta, (hf_cfg.rope_parameters or {}).get("rope_theta")),
            "rms_norm_eps": (cfg.rms_norm_eps, hf_cfg.rms_norm_eps),
            "max_position": (cfg.max_position, hf_cfg.max_position_embeddings),
        }
        for name, (ours_value, ckpt_value) in soft.items():
            if ckpt_value is not None and ours_value != ckpt_value:
                warnings.warn(
                    f"LLMConfig.{name}={ours_value} ignored: the checkpoint at {cfg.pretrained!r} uses {ckpt_value}",
                    stacklevel=3,
                )
        tied = self.hf.lm_head.weight is self.hf.model.embed_tokens.weight
        if tied and not cfg.tie_word_embeddings:
            self._untie_lm_head()
        elif not tied and cfg.tie_word_embeddings:
            warnings.warn(
                f"LLMConfig.tie_word_embeddings=True ignored: the checkpoint at {cfg.pretrained!r} has its own "
                "LM head, which is kept untied",
                stacklevel=3,
            )

    def _untie_lm_head(self) -> None:
        """Give the LM head its own copy of the embedding matrix (and keep save_pretrained consistent)."""
        self.hf.config.tie_word_embeddings = False
        self.hf.lm_head.weight = nn.Parameter(self.hf.model.embed_tokens.weight.detach().clone())
        self.hf.all_tied_weights_keys = self.hf.get_expanded_tied_weights_keys(all_submodels=True)

    @property
    def hidden_dim(self) -> int:
        """Model width D."""
        return self.hf.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Current vocabulary size V (after any :meth:`resize_vocab`)."""
        return self.hf.model.embed_tokens.num_embeddings

    @property
    def is_tied(self) -> bool:
        """Whether the LM head shares its weight with the input embedding."""
        return self.hf.lm_head.weight is self.hf.model.embed_tokens.weight

    def embed_tokens(self, input_ids_BL: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``B×L×D``."""
        return self.hf.model.embed_tokens(input_ids_BL)

    def logits(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        """LM head only: ``B×L×D`` final hidden states -> ``B×L×V`` logits."""
        return self.hf.lm_head(hidden_BLD)

    @torch.no_grad()
    def resize_vocab(self, new_size: int) -> None:
        """Resize the embedding (and an untied LM head); new rows are the MEAN of the existing rows.

        The mean keeps new special tokens in-distribution: as an input, the new embedding has the typical norm and
        direction of real tokens instead of being an outlier; as an output row, its logit ``h·mean(E)`` is the
        average logit, so adding tokens barely changes the next-token distribution of the pretrained LM
        (Hewitt, "Initializing new word embeddings", 2021). Shrinking keeps the first ``new_size`` rows; equal size
        is a no-op.
        """
        if new_size < 1:
            raise ValueError(f"resize_vocab(new_size={new_size}) must be >= 1")
        old_size = self.vocab_size
        if new_size == old_size:
            return
        tied = self.is_tied
        emb_mean_D = self.hf.model.embed_tokens.weight.float().mean(dim=0)
        head_mean_D = self.hf.lm_head.weight.float().mean(dim=0)
        self.hf.resize_token_embeddings(new_size, mean_resizing=False)
        if new_size > old_size:
            emb = self.hf.model.embed_tokens.weight
            emb[old_size:] = emb_mean_D.to(emb.dtype)
            if not tied:
                head = self.hf.lm_head.weight
                head[old_size:] = head_mean_D.to(head.dtype)
        assert self.is_tied == tied and self.vocab_size == new_size

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this model."""
        return DynamicCache(config=self.hf.config)

    def forward(
        self,
        inputs_embeds_BLD: torch.Tensor,
        attention_mask_B1QK: torch.Tensor,
        position_ids_BL: torch.Tensor,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        compute_logits: bool = True,
    ) -> LLMOutput:
        """Run the decoder on embeddings.

        Args:
            inputs_embeds_BLD: Embeddings of the L new tokens (text embeddings and projected image tokens).
            attention_mask_B1QK: Bool mask, True = may attend, ``B×1×L×K`` with K = cached + new tokens
                (see :func:`cheers_pl.model.attention_mask.block_causal_mask`).
            position_ids_BL: Long 1-D positions of the new tokens (padding-aware, continuing after the cache).
            past_key_values: KV cache of the earlier tokens, or None. A given cache is always read and extended
                in place by the L new tokens (see :func:`truncate_cache` to drop them again).
            use_cache: Create a fresh cache when none is given, and return the cache.
            compute_logits: Also apply the LM head.

        Returns:
            :class:`LLMOutput` with ``hidden_BLD`` (B×L×D, after the final norm), ``logits_BLV`` (B×L×V or None)
            and ``past_key_values``.
        """
        B, L, _ = inputs_embeds_BLD.shape
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask_B1QK.dtype != torch.bool:
            raise ValueError(f"attention_mask_B1QK must be a bool tensor, got dtype {attention_mask_B1QK.dtype}")
        if attention_mask_B1QK.shape != (B, 1, L, past_len + L):
            raise ValueError(
                f"attention_mask_B1QK has shape {tuple(attention_mask_B1QK.shape)}, expected "
                f"{(B, 1, L, past_len + L)} (batch, 1, new tokens, cached {past_len} + new tokens)"
            )
        if position_ids_BL.shape != (B, L):
            raise ValueError(f"position_ids_BL has shape {tuple(position_ids_BL.shape)}, expected {(B, L)}")
        mask = attention_mask_B1QK
        if self.hf.config._attn_implementation == "eager":
            # eager adds the mask to the scores: True -> 0, False -> most negative finite value of the input dtype.
            min_value = torch.finfo(inputs_embeds_BLD.dtype).min
            mask = torch.zeros(mask.shape, dtype=inputs_embeds_BLD.dtype, device=mask.device).masked_fill(
                ~mask, min_value
            )
        if use_cache and past_key_values is None:
            past_key_values = self.new_cache()
        out = self.hf.model(
            inputs_embeds=inputs_embeds_BLD,
            attention_mask=mask,
            position_ids=position_ids_BL,
            cache=past_key_values,
            use_cache=use_cache or past_key_values is not None,
        )
        hidden_BLD = out.last_hidden_state
        return LLMOutput(
            hidden_BLD=hidden_BLD,
            logits_BLV=self.logits(hidden_BLD) if compute_logits else None,
            past_key_values=past_key_values,
        )


def truncate_cache(cache: Cache, length: int) -> None:
    """Drop every cached token after the first ``length`` (in place).

    The flow sampler runs the image block against the cached prompt at every ODE step; truncating back to the
    prompt length after each step reuses the prompt cache without copying it.
    """
    current = cache.get_seq_length()
    if not 0 <= length <= current:
        raise ValueError(f"truncate_cache(length={length}) must lie in [0, {current}] (current cache length)")
    if length < current:
        cache.crop(length - current)
