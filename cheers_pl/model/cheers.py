"""The Cheers model: vision tokenizer + LLM backbone + cascaded flow-matching head, composed into one module.

Composition only (DESIGN.md §1): one interleaved sequence of text and image blocks runs through the LLM; text leaves
through the LM head, the final hidden states at the image positions leave through the flow head. Tensors in, tensors
out: `forward(ids, masks, z_t, t)` returns the logits and the velocity of one pass; the flow process that makes z_t
and scores the velocity is `cheers_pl.objective.flow_matching`, and text becomes ids in `cheers_pl.pipeline`
(`answer`, `generate`). `vision` is the unified vision tokenizer; the text tokenizer never enters this package.

Shape legend: `cheers_pl.model`.

References:
    Cheers, arXiv 2603.12793, §3 (unified tokenizer, LLM with bidirectional image blocks, cascaded flow matching).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from cheers_pl.model.attention_mask import block_causal_mask, positions_from_padding
from cheers_pl.model.contrastive_towers import ContrastiveTowers, ContrastiveTowersConfig
from cheers_pl.model.decoding import decode
from cheers_pl.model.flow_head import FlowHead, FlowHeadConfig
from cheers_pl.model.layers import masked_mean
from cheers_pl.model.llm import LLM, LLMConfig
from cheers_pl.model.vision_tokenizer import VisionTokenizer, VisionTokenizerConfig, full_vision_tokenizer_config
from cheers_pl.model.weights import config_from_dict, load_weights, parameters_on_meta, read_config, save_weights
from cheers_pl.objective.flow_matching import velocity_from_prediction


@dataclass
class CheersConfig:
    """The whole model; defaults are the tiny preset (full size: compose the components' `full_*` configs)."""

    vision: VisionTokenizerConfig = field(default_factory=VisionTokenizerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    flow_head: FlowHeadConfig = field(default_factory=FlowHeadConfig)
    # SigLIP-style text tower of the `tokenizer` stage (kept for CLIP score when no local CLIP is configured)
    contrastive: ContrastiveTowersConfig | None = None

    def __post_init__(self) -> None:
        tok, llm, head = self.vision, self.llm, self.flow_head
        if not tok.llm_dim == llm.dim == head.llm_dim:
            raise ValueError(
                f"LLM widths disagree: vision.llm_dim={tok.llm_dim}, llm.dim={llm.dim}, "
                f"flow_head.llm_dim={head.llm_dim} must all be equal"
            )
        if head.sem_dim != tok.encoder.dim:
            raise ValueError(
                f"flow_head.sem_dim={head.sem_dim} must equal the semantic encoder width "
                f"vision.encoder.dim={tok.encoder.dim} (the detail residual is added at that width)"
            )
        vae_latent_dim = tok.vae.latent_channels * tok.vae.patch_size**2
        if head.latent_dim != vae_latent_dim:
            raise ValueError(
                f"flow_head.latent_dim={head.latent_dim} must equal the VAE latent dim {vae_latent_dim} "
                f"(vision.vae.latent_channels={tok.vae.latent_channels} · patch_size²={tok.vae.patch_size}²)"
            )
        if head.shuffle_factor != tok.compression:
            raise ValueError(
                f"flow_head.shuffle_factor={head.shuffle_factor} must equal vision.compression={tok.compression} "
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
    vision = full_vision_tokenizer_config(vae_pretrained=vae_pretrained, encoder_pretrained=encoder_pretrained)
    return CheersConfig(vision=vision, llm=llm, flow_head=head)


@dataclass
class CheersOutput:
    """Result of `CheersModel.forward`: the logits of every row, the velocity of the R rows with an image block."""

    logits: torch.Tensor  # B×L×V
    velocity: torch.Tensor  # R×P×h×w predicted v = x1 − x0 of the image rows, in row order (R may be 0)
    # (with flow_head.prediction="data" the head predicts x1 and this is its velocity (x̂1 − z_t) / (1 − t))
    rows: torch.Tensor  # R long: the rows that hold an image block
    gates: torch.Tensor | None = None  # R×M HFI gate values when `return_gates`


class CheersModel(nn.Module):
    """Unified understanding + generation model: `vision` (VisionTokenizer), `llm` (LLM), `flow_head`."""

    def __init__(self, cfg: CheersConfig, vocab_size: int | None = None) -> None:
        """Builds every component from `cfg`.

        Args:
            cfg: The architecture.
            vocab_size: Length of the text tokenizer the model will read (special tokens included): the LLM
                vocabulary grows to it (new rows = mean of the old, `LLM.resize_vocab`) and the contrastive text
                tower is built with it. Grow only: a pretrained vocabulary padded beyond the tokenizer (Qwen2.5:
                151936 rows) keeps its shape so its checkpoints stay loadable; the unused rows are never input ids.
        """
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTokenizer(cfg.vision)
        self.llm = LLM(cfg.llm)
        if vocab_size is not None and vocab_size > self.llm.vocab_size:
            self.llm.resize_vocab(vocab_size)
        self.flow_head = FlowHead(cfg.flow_head)
        self.contrastive = None
        if cfg.contrastive is not None:
            towers_cfg = cfg.contrastive if vocab_size is None else replace(cfg.contrastive, vocab_size=vocab_size)
            self.contrastive = ContrastiveTowers(towers_cfg, self.vision.encoder.dim)

    @property
    def num_image_tokens(self) -> int:
        """LLM positions N per image block."""
        return self.vision.num_image_tokens

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
        z_t: torch.Tensor | None,
        t: torch.Tensor | None,
        return_gates: bool = False,
        segment_ids: torch.Tensor | None = None,
    ) -> CheersOutput:
        """One pass over interleaved, left-padded sequences: logits of every row and velocity of the image rows.

        The R rows with an image block get their latent `z_t` tokenised into the block (D → encoder → compressor);
        the LLM runs under the block-causal mask; the flow head predicts the velocity from the final hidden states at
        the image positions, with the detail residual S(D(z_t)). It runs on every image row (understanding rows
        too, at t = 1); the objective weighs the flow loss per row.

        Args:
            input_ids: B×L long ids.
            pad_mask: B×L bool, True for real tokens (padding on the left).
            block_ids: B×L long, 0 text, k > 0 the row's image block.
            z_t: R×P×h×w normalised latents of the image rows in row order (None when no row has a block).
            t: R flow times of those latents (t = 1 is data).
            return_gates: Also return the HFI gate values.
            segment_ids: B×L long packed continuations (`cheers_pl.model.attention_mask`), or None.

        Returns:
            `CheersOutput`: logits B×L×V, velocity R×P×h×w, rows R, gates R×M or None.
        """
        R = self.image_positions(block_ids)[0].numel()
        h, w = self.vision.semantic_grid_hw
        expected = (R, self.vision.latent_dim, h, w)
        if R and (z_t is None or tuple(z_t.shape) != expected):
            got = None if z_t is None else tuple(z_t.shape)
            raise ValueError(f"z_t must have shape {expected} (rows with an image block, P, h, w), got {got}")
        tokens_RND = detail_RMC = None
        if R:
            tokens_RND, detail_RMC = self.vision(z_t)
        return self.forward_tokens(
            input_ids,
            pad_mask,
            block_ids,
            tokens_RND,
            t,
            detail_RMC,
            return_gates=return_gates,
            segment_ids=segment_ids,
            z_t_F=z_t,
        )

    def forward_tokens(
        self,
        input_ids: torch.Tensor,
        pad_mask: torch.Tensor,
        block_ids: torch.Tensor,
        image_tokens_RND: torch.Tensor | None,
        t_F: torch.Tensor | None,
        detail_FMC: torch.Tensor | None,
        flow_rows_F: torch.Tensor | None = None,
        return_gates: bool = False,
        segment_ids: torch.Tensor | None = None,
        z_t_F: torch.Tensor | None = None,
    ) -> CheersOutput:
        """`forward` after the vision tokenizer: the LLM on given image tokens, the flow head on chosen image rows.

        Lets a caller tokenise some rows itself (e.g. from cached features of a frozen encoder) and run the flow
        head only on the rows whose flow loss counts (generation targets).

        Args:
            image_tokens_RND: LLM tokens of the R image rows, in row order (None when no row has a block).
            t_F: Flow times of the F rows that go through the flow head.
            detail_FMC: Their detail residuals S(D(z_t)).
            flow_rows_F: Long indices into the R image rows of those F rows (default: all R rows).
            segment_ids: B×L long packed continuations, or None (see `forward`).
            z_t_F: The F latents the flow rows were tokenised from; needed by `flow_head.latent_skip` and by
                `flow_head.prediction="data"`, whose output becomes the velocity `(x̂1 − z_t) / (1 − t)` here.

        Returns:
            `CheersOutput` with velocity F×P×h×w and `rows` the F batch rows it belongs to.
        """
        rows_R, cols_RN = self.image_positions(block_ids)
        flow_R = rows_R if flow_rows_F is None else rows_R[flow_rows_F]
        F = flow_R.numel()
        if F and (t_F is None or t_F.shape != (F,)):
            raise ValueError(f"t must have shape ({F},), got {None if t_F is None else tuple(t_F.shape)}")
        embeds_BLD = self.embed(input_ids, block_ids, image_tokens_RND)
        mask = block_causal_mask(block_ids, pad_mask, segment_ids_BL=segment_ids)
        out = self.llm(embeds_BLD, mask, positions_from_padding(pad_mask, segment_ids))
        h, w = self.vision.semantic_grid_hw
        if not F:
            velocity = embeds_BLD.new_zeros(0, self.vision.latent_dim, h, w)
            gates = embeds_BLD.new_zeros(0, h * w) if return_gates else None
            return CheersOutput(out.logits_BLV, velocity, flow_R, gates)
        cols_FN = cols_RN if flow_rows_F is None else cols_RN[flow_rows_F]
        hidden_FND = out.hidden_BLD[flow_R[:, None], cols_FN]
        grid = self.vision.grid_hw
        prompt_FD = None
        if self.flow_head.needs_prompt:  # the text before each flow row's image block
            cols_L = torch.arange(block_ids.shape[1], device=block_ids.device)
            before_FL = cols_L[None] < cols_FN[:, :1]
            prompt_FD = masked_mean(out.hidden_BLD[flow_R], before_FL & pad_mask[flow_R] & (block_ids[flow_R] == 0))
        t_head_F = t_F.to(detail_FMC.dtype)
        v_F, gate_FM = self.flow_head(
            hidden_FND, t_head_F, detail_FMC, grid, return_gate=True, prompt_BC=prompt_FD, z_t_BLHW=z_t_F
        )
        v_F = self.velocity(v_F, z_t_F, t_F)
        return CheersOutput(out.logits_BLV, v_F, flow_R, gate_FM if return_gates else None)

    def velocity(self, head_out: torch.Tensor, z_t: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        """The velocity the flow head's output stands for (`flow_head.prediction`); z_t is needed for "data"."""
        prediction = self.cfg.flow_head.prediction
        if prediction != "velocity" and (z_t is None or z_t.shape != head_out.shape):
            got = None if z_t is None else tuple(z_t.shape)
            raise ValueError(
                f"flow_head.prediction={prediction!r} needs z_t of shape {tuple(head_out.shape)}, got {got}"
            )
        return velocity_from_prediction(head_out, z_t, t, prediction)

    @torch.no_grad()
    def answer_ids(
        self,
        images_B3HW: torch.Tensor,
        input_ids: torch.Tensor,
        pad_mask: torch.Tensor,
        block_ids: torch.Tensor,
        max_new_tokens: int,
        eos_token_ids: int | Sequence[int],
        do_sample: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Decodes text after understanding prompts that hold one image block per row (clean image, t = 1).

        Returns:
            The new token ids B×T (see `cheers_pl.model.decoding.decode`).
        """
        if images_B3HW.shape[0] != input_ids.shape[0]:
            raise ValueError(f"got {images_B3HW.shape[0]} images for {input_ids.shape[0]} prompts")
        tokens_BND, _ = self.vision(self.vision.encode(images_B3HW.to(self.device)))
        return decode(
            self.llm,
            self.embed(input_ids, block_ids, tokens_BND),
            block_ids,
            pad_mask,
            max_new_tokens,
            eos_token_ids,
            do_sample=do_sample,
            temperature=temperature,
            generator=generator,
            use_cache=use_cache,
        )

    def exported_config(self) -> CheersConfig:
        """The config as built: no pretrained paths (the weights travel with it), actual vocabulary and tying."""
        cfg, vis = self.cfg, self.cfg.vision
        contrastive = cfg.contrastive
        if self.contrastive is not None:
            contrastive = replace(contrastive, vocab_size=self.contrastive.cfg.vocab_size)
        return replace(
            cfg,
            llm=replace(cfg.llm, pretrained=None, vocab_size=self.llm.vocab_size, tie_word_embeddings=self.llm.is_tied),
            vision=replace(
                vis,
                vae=replace(vis.vae, pretrained=None, subfolder=None),
                encoder=replace(vis.encoder, pretrained=None),
            ),
            contrastive=contrastive,
        )

    def save_pretrained(self, directory: str | Path, max_shard_size: int | None = None) -> Path:
        """Writes `cheers_config.json` and `model.safetensors` (or shards of at most `max_shard_size` bytes with an
        index) to `directory` (created); returns it.

        `cheers_pl.pipeline.CheersPipeline.save_pretrained` adds the text tokenizer beside them.
        """
        return save_weights(self, self.exported_config(), directory, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> "CheersModel":
        """Reloads the network written by `save_pretrained` (strict: every tensor present, no extra ones); eval mode.

        The architecture is built with its parameters on the meta device and the stored tensors are assigned, so a
        bf16 export loads in bf16 without an fp32 copy or a random init first; `dtype` then casts (None keeps the
        stored dtype).

        Raises:
            ValueError: when `directory` lacks the config or the weights, or they do not fit each other.
        """
        cfg = config_from_dict(CheersConfig, read_config(directory))
        with parameters_on_meta():
            model = cls(cfg)
        load_weights(model, directory, assign=True)
        return model.to(device=device, dtype=dtype).eval()
