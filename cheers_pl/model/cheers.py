"""The Cheers model: vision tokenizer + LLM backbone + cascaded flow-matching head, composed into one module.

Composition only (DESIGN.md §1): one interleaved sequence of text and image blocks runs through the LLM; text leaves
through the LM head, the final hidden states at the image positions leave through the flow head. No loss is computed
here (STYLE.md R3/R4): `forward` returns what the objectives need (logits, velocity, x0 = z0, x1 = z1). Inference
entry points: `answer` (image + question → text) and `generate` (prompt → image, `cheers_pl.model.generation`).

Shape legend: B batch, L sequence length, D LLM width, V vocab, N LLM tokens per image block, R rows that hold an
image block, P latent channels, h/w latent grid (= semantic grid), M = h·w semantic tokens, C_enc encoder width.

References:
    Cheers, arXiv 2603.12793, §3 (unified tokenizer, LLM with bidirectional image blocks, cascaded flow matching).
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from cheers_pl.data.processing import SequenceBuilder
from cheers_pl.data.text_tokenizer import TURN_END
from cheers_pl.model.attention_mask import block_causal_mask, positions_from_padding
from cheers_pl.model.contrastive_towers import ContrastiveTowers, ContrastiveTowersConfig
from cheers_pl.model.decoding import decode
from cheers_pl.model.flow_head import FlowHead, FlowHeadConfig
from cheers_pl.model.generation import GenerationResult, PromptVelocity, generate_images, left_pad
from cheers_pl.model.llm import LLM, LLMConfig
from cheers_pl.model.vision_tokenizer import VisionTokenizer, VisionTokenizerConfig, full_vision_tokenizer_config


@dataclass
class CheersConfig:
    """The whole model; defaults are the tiny preset (full size: compose the components' `full_*` configs)."""

    tokenizer: VisionTokenizerConfig = field(default_factory=VisionTokenizerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    flow_head: FlowHeadConfig = field(default_factory=FlowHeadConfig)
    # SigLIP-style text tower of the `tokenizer` stage (kept for CLIP score when no local CLIP is configured)
    contrastive: ContrastiveTowersConfig | None = None

    def __post_init__(self) -> None:
        tok, llm, head = self.tokenizer, self.llm, self.flow_head
        if not tok.llm_dim == llm.dim == head.llm_dim:
            raise ValueError(
                f"LLM widths disagree: tokenizer.llm_dim={tok.llm_dim}, llm.dim={llm.dim}, "
                f"flow_head.llm_dim={head.llm_dim} must all be equal"
            )
        if head.sem_dim != tok.encoder.dim:
            raise ValueError(
                f"flow_head.sem_dim={head.sem_dim} must equal the semantic encoder width "
                f"tokenizer.encoder.dim={tok.encoder.dim} (the detail residual is added at that width)"
            )
        vae_latent_dim = tok.vae.latent_channels * tok.vae.patch_size**2
        if head.latent_dim != vae_latent_dim:
            raise ValueError(
                f"flow_head.latent_dim={head.latent_dim} must equal the VAE latent dim {vae_latent_dim} "
                f"(tokenizer.vae.latent_channels={tok.vae.latent_channels} · patch_size²={tok.vae.patch_size}²)"
            )
        if head.shuffle_factor != tok.compression:
            raise ValueError(
                f"flow_head.shuffle_factor={head.shuffle_factor} must equal tokenizer.compression={tok.compression} "
                "(the head's pixel-shuffle inverts the tokenizer's unshuffle)"
            )


def full_cheers_config(
    llm_pretrained: str | None = None, encoder_pretrained: str | None = None, vae_pretrained: str | None = None
) -> CheersConfig:
    """The 1.5B preset: Qwen2.5-1.5B (untied head, as the released checkpoint), SigLIP2 so400m/16-512, FLUX.2 VAE."""
    llm = LLMConfig(
        pretrained=llm_pretrained,
        vocab_size=151936,
        dim=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        mlp_dim=8960,
        max_position=32768,
        tie_word_embeddings=False,
    )
    head = FlowHeadConfig(
        llm_dim=1536,
        sem_dim=1152,
        latent_dim=128,
        stage1_depth=7,
        stage1_heads=12,
        stage1_kv_heads=2,
        stage2_depth=3,
        stage2_heads=16,
        stage2_kv_heads=2,
    )
    tokenizer = full_vision_tokenizer_config(vae_pretrained=vae_pretrained, encoder_pretrained=encoder_pretrained)
    return CheersConfig(tokenizer=tokenizer, llm=llm, flow_head=head)


@dataclass
class CheersOutput:
    """Result of `CheersModel.forward`. Rows without an image block hold zeros in every image field."""

    logits: torch.Tensor  # B×L×V
    velocity: torch.Tensor  # B×P×h×w predicted v = x1 − x0 (zeros, outside the graph, for rows without a block)
    z0: torch.Tensor  # B×P×h×w noise x0
    z1: torch.Tensor  # B×P×h×w clean latent x1
    z_t: torch.Tensor  # B×P×h×w noisy latent t·z1 + (1−t)·z0 that was tokenized
    has_image: torch.Tensor  # B bool: the row holds an image block (velocity/z fields are meaningful)
    gates: torch.Tensor | None = None  # B×M HFI gate values when `return_gates`


def _scatter_rows(x_R: torch.Tensor, rows_R: torch.Tensor, batch: int) -> torch.Tensor:
    """Place per-row results back into a zero batch tensor (differentiable; identity when every row is present)."""
    if x_R.shape[0] == batch:
        return x_R
    return x_R.new_zeros(batch, *x_R.shape[1:]).index_copy(0, rows_R, x_R)


class CheersModel(nn.Module):
    """Unified understanding + generation model: `tokenizer` (VisionTokenizer), `llm` (LLM), `flow_head`."""

    def __init__(self, cfg: CheersConfig, text_tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = VisionTokenizer(cfg.tokenizer)
        self.llm = LLM(cfg.llm)
        # Grow only: a pretrained vocabulary padded beyond the tokenizer (Qwen2.5: 151936 rows) keeps its shape so
        # its checkpoints stay loadable; the unused rows are never input ids.
        if len(text_tokenizer) > self.llm.vocab_size:
            self.llm.resize_vocab(len(text_tokenizer))
        self.flow_head = FlowHead(cfg.flow_head)
        self.contrastive = None
        if cfg.contrastive is not None:
            towers_cfg = replace(cfg.contrastive, vocab_size=len(text_tokenizer))
            self.contrastive = ContrastiveTowers(towers_cfg, self.tokenizer.encoder.dim)
        self.text_tokenizer = text_tokenizer
        self.sequence_builder = SequenceBuilder(text_tokenizer, self.tokenizer.num_image_tokens)

    @property
    def num_image_tokens(self) -> int:
        """LLM positions N per image block."""
        return self.tokenizer.num_image_tokens

    @property
    def device(self) -> torch.device:
        """Device of the LLM embedding (inputs built from strings go there)."""
        return self.llm.hf.model.embed_tokens.weight.device

    def image_positions(self, block_ids_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows that hold an image block and the columns of its N positions.

        Args:
            block_ids_BL: Long block ids (0 text, k > 0 image block k); at most one block of exactly N positions
                per row.

        Returns:
            `(rows_R, cols_RN)`: row indices in increasing order and, per row, the image columns in order.
        """
        n = self.num_image_tokens
        is_image_BL = block_ids_BL > 0
        counts_B = is_image_BL.sum(dim=1)
        bad_B = (counts_B != 0) & (counts_B != n)
        if bad_B.any():
            row = int(bad_B.nonzero()[0])
            raise ValueError(
                f"block_ids row {row} has {int(counts_B[row])} image positions; an image block must have "
                f"num_image_tokens={n} positions and a row at most one block"
            )
        ids_max_B = block_ids_BL.masked_fill(~is_image_BL, 0).amax(dim=1)
        ids_min_B = block_ids_BL.masked_fill(~is_image_BL, torch.iinfo(block_ids_BL.dtype).max).amin(dim=1)
        several_B = (counts_B > 0) & (ids_max_B != ids_min_B)
        if several_B.any():
            raise ValueError(f"block_ids row {int(several_B.nonzero()[0])} holds more than one image block")
        rows_R = (counts_B == n).nonzero().squeeze(1)
        cols_RN = is_image_BL[rows_R].nonzero()[:, 1].view(-1, n)
        return rows_R, cols_RN

    def embed(
        self, input_ids_BL: torch.Tensor, block_ids_BL: torch.Tensor, image_tokens_RND: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings with the image-block positions replaced by the vision tokenizer's LLM tokens.

        Args:
            input_ids_BL: Long token ids (the ids at image positions are placeholders and are overwritten).
            block_ids_BL: Long block ids, 0 = text.
            image_tokens_RND: LLM image tokens, one entry per row that holds an image block, in row order (R = B
                when every row has one); None when no row has one.

        Returns:
            Embeddings B×L×D.
        """
        embeds_BLD = self.llm.embed_tokens(input_ids_BL)
        rows_R, cols_RN = self.image_positions(block_ids_BL)
        if rows_R.numel() == 0 and image_tokens_RND is None:
            return embeds_BLD
        expected = (rows_R.numel(), self.num_image_tokens, embeds_BLD.shape[-1])
        if image_tokens_RND is None or tuple(image_tokens_RND.shape) != expected:
            got = None if image_tokens_RND is None else tuple(image_tokens_RND.shape)
            raise ValueError(f"image_tokens must have shape {expected} (rows with an image block, N, D), got {got}")
        return embeds_BLD.index_put((rows_R[:, None], cols_RN), image_tokens_RND.to(embeds_BLD.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        pad_mask: torch.Tensor,
        block_ids: torch.Tensor,
        images: torch.Tensor,
        t_B: torch.Tensor,
        z0: torch.Tensor | None = None,
        return_gates: bool = False,
    ) -> CheersOutput:
        """One training pass over interleaved sequences (left-padded).

        Rows with an image block are encoded, noised to their `t` (the stage picks 1 for understanding inputs and
        U(0, 1) for generation targets) and tokenized; the LLM runs under the block-causal mask; the flow head
        predicts the velocity from the final hidden states at the image positions, with the detail residual.
        The flow head runs on every image row (understanding rows too); the stage weights the flow loss per row.

        Args:
            input_ids: B×L long ids.
            pad_mask: B×L bool, True for real tokens (padding on the left).
            block_ids: B×L long, 0 text, k > 0 the row's image block.
            images: B×3×H×W in [-1, 1] (ignored for rows without an image block).
            t_B: B flow times in [0, 1] (t = 1 is data; ignored for rows without an image block).
            z0: Optional B×P×h×w noise (default: fresh `torch.randn`).
            return_gates: Also return the HFI gate values.

        Returns:
            `CheersOutput`: logits B×L×V; velocity, z0, z1, z_t B×P×h×w; has_image B; gates B×M or None.
        """
        B = input_ids.shape[0]
        rows_R, cols_RN = self.image_positions(block_ids)
        has_image_B = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        has_image_B[rows_R] = True
        tokens_RND = None
        if rows_R.numel():
            if t_B.shape != (B,):
                raise ValueError(f"t_B must have shape ({B},), got {tuple(t_B.shape)}")
            z1_R = self.tokenizer.encode(images[rows_R])
            z0_R = torch.randn_like(z1_R) if z0 is None else z0[rows_R].to(z1_R)
            t_R = t_B[rows_R].to(z1_R.dtype)
            t_R1hw = t_R.view(-1, 1, 1, 1)
            z_t_R = t_R1hw * z1_R + (1 - t_R1hw) * z0_R
            tokens_RND, detail_RMC = self.tokenizer.tokenize(z_t_R)
        embeds_BLD = self.embed(input_ids, block_ids, tokens_RND)
        out = self.llm(embeds_BLD, block_causal_mask(block_ids, pad_mask), positions_from_padding(pad_mask))

        if not rows_R.numel():
            h, w = self.tokenizer.semantic_grid_hw
            zeros = embeds_BLD.new_zeros(B, self.tokenizer.latent_dim, h, w)
            gates = embeds_BLD.new_zeros(B, h * w) if return_gates else None
            return CheersOutput(out.logits_BLV, zeros, zeros, zeros, zeros, has_image_B, gates)
        hidden_RND = out.hidden_BLD[rows_R[:, None], cols_RN]
        v_R, gate_RM = self.flow_head(hidden_RND, t_R, detail_RMC, self.tokenizer.grid_hw, return_gate=True)
        return CheersOutput(
            logits=out.logits_BLV,
            velocity=_scatter_rows(v_R, rows_R, B),
            z0=_scatter_rows(z0_R, rows_R, B),
            z1=_scatter_rows(z1_R, rows_R, B),
            z_t=_scatter_rows(z_t_R, rows_R, B),
            has_image=has_image_B,
            gates=_scatter_rows(gate_RM, rows_R, B) if return_gates else None,
        )

    @torch.no_grad()
    def answer(
        self,
        images_B3HW: torch.Tensor,
        questions: list[str],
        max_new_tokens: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """Answer one question per image (clean image, t = 1); decoding stops at `<|im_end|>`.

        Returns:
            The decoded answers, special tokens removed and whitespace stripped.
        """
        if images_B3HW.shape[0] != len(questions):
            raise ValueError(f"got {images_B3HW.shape[0]} images but {len(questions)} questions")
        builder = self.sequence_builder
        seqs = [builder.understanding_prompt(q) for q in questions]
        ids_BL, pad_BL, blocks_BL, _ = left_pad(seqs, builder.ids["pad"], self.device)
        tokens_BND, _ = self.tokenizer.tokenize(self.tokenizer.encode(images_B3HW.to(self.device)))
        eos = builder.ids[TURN_END]
        new_BT = decode(
            self.llm,
            self.embed(ids_BL, blocks_BL, tokens_BND),
            blocks_BL,
            pad_BL,
            max_new_tokens,
            eos,
            do_sample=do_sample,
            temperature=temperature,
            generator=generator,
            use_cache=use_cache,
        )
        answers = []
        for row in new_BT.tolist():
            row = row[: row.index(eos)] if eos in row else row
            answers.append(self.text_tokenizer.decode(row, skip_special_tokens=True).strip())
        return answers

    def velocity_fn(
        self, prompts: list[str], guidance_scale: float, use_cache: bool = True, record_gates: list | None = None
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The guided velocity field `v(z_t_BPhw, t_B)` of the image block after `prompts` (no gradients).

        See `cheers_pl.model.generation.PromptVelocity`: the prompt (and its `<no_mean>` twin when
        `guidance_scale != 1`) runs once into a KV cache; each call re-tokenises z_t and runs only the N image
        tokens. When `record_gates` is a list, each call appends the conditional half's gate values B×M.
        """
        return PromptVelocity(self, prompts, guidance_scale, use_cache=use_cache, record_gates=record_gates)

    def generate(
        self,
        prompts: list[str],
        seed: int = 0,
        num_steps: int = 80,
        guidance_scale: float = 9.5,
        alpha: float = 0.5,
        sampler: str = "euler",
        use_cache: bool = True,
        record_gates: bool = False,
    ) -> GenerationResult:
        """Text → image by integrating the flow from seeded noise (t = 0) to data (t = 1); paper defaults.

        Returns:
            `GenerationResult` with images B×3×H×W in [-1, 1], final latents B×P×h×w, gates (one B×M entry per
            velocity evaluation, stacked, or None) and the gates' grid (h, w).
        """
        return generate_images(
            self,
            prompts,
            seed=seed,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            alpha=alpha,
            sampler=sampler,
            use_cache=use_cache,
            record_gates=record_gates,
        )

    def save_pretrained(self, directory: str | Path) -> Path:
        """Exports config, weights and text tokenizer to `directory` (`cheers_pl.model.weights`); returns it."""
        from cheers_pl.model.weights import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> "CheersModel":
        """Reloads a model written by `save_pretrained` (eval mode) in one call."""
        from cheers_pl.model.weights import load_pretrained

        return load_pretrained(directory, device=device, dtype=dtype)
