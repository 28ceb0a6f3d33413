"""The loss and public inference methods shared by the `align` and `generation` stages (composition, R4).

`L = CE_text + λ·MSE(v̂, x1 − x0)` (DESIGN.md §1.3): understanding rows see their image clean (t = 1), generation
rows a noisy latent at t from the flow objective's t-sampler; with probability `cond_drop_prob` a generation row's
prompt tokens become `<no_mean>` (classifier-free guidance training).
"""

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from cheers_pl.data.batch import Batch
from cheers_pl.data.tasks import TASK_GENERATION
from cheers_pl.data.text_tokenizer import CHEERS_SPECIAL_TOKENS, NO_MEAN, load_text_tokenizer
from cheers_pl.model.cheers import CheersModel
from cheers_pl.objective.flow_matching import FlowMatchingConfig, sample_t, training_losses
from cheers_pl.objective.lm import lm_loss
from cheers_pl.objective.sampling import SamplingConfig
from cheers_pl.pipeline import CheersPipeline, GenerationResult
from cheers_pl.stage.base import StageConfig, StageModule
from cheers_pl.stage.cache import FrozenCache


@dataclass
class MultimodalStageConfig(StageConfig):
    """Loss weights, t-sampling, guidance dropout and sampling defaults of the LLM stages."""

    lm_weight: float = 1.0
    flow_weight: float = 1.0  # λ
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    cond_drop_prob: float = 0.0
    understanding_zero_target: bool = False  # the official code's zero-velocity target on understanding slots
    new_token_rows_only: bool = False  # train only the embedding rows of tokens the text tokenizer added
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # defaults of `generate_images`
    # memoise per sample what frozen modules compute (VAE latents; clean semantic tokens while D and the encoder
    # are frozen): RAM grows by ~(P·h·w + M·C)·4 bytes per distinct sample, so meant for small worlds (tiny preset)
    cache_frozen: bool = False
    cache_max_items: int = 50_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"stage.cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")
        if self.cache_max_items < 0:
            raise ValueError(f"stage.cache_max_items must be >= 0, got {self.cache_max_items}")
        if self.understanding_zero_target and self.flow.loss_weighting != "none":
            raise ValueError(
                f"stage.flow.loss_weighting={self.flow.loss_weighting!r} weighs generation rows; "
                "stage.understanding_zero_target=true weighs every image slot alike: set one of them"
            )


class MultimodalStage(StageModule):
    """Builds the whole `CheersModel` (and its text pipeline), trains the declared parameters on the joint loss."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.stage_cfg: MultimodalStageConfig = cfg.stage
        text_tokenizer = load_text_tokenizer(cfg.data.text_tokenizer_path())
        self.text_tokenizer = text_tokenizer
        self.model = CheersModel(cfg.model, vocab_size=len(text_tokenizer))
        self.pipeline = CheersPipeline(self.model, text_tokenizer, self.stage_cfg.sampling, cfg.data.processing)
        if self.model.num_image_tokens != cfg.data.num_image_tokens:
            raise ValueError(
                f"data.num_image_tokens={cfg.data.num_image_tokens} but the model makes "
                f"{self.model.num_image_tokens} LLM tokens per image; set data.num_image_tokens"
            )
        self.no_mean_id = text_tokenizer.convert_tokens_to_ids(NO_MEAN)
        self.setup_trainable()
        if self.stage_cfg.new_token_rows_only:
            self._restrict_embedding_grad(text_tokenizer.convert_tokens_to_ids(list(CHEERS_SPECIAL_TOKENS)))

    def declare_trainable(self, patterns: list[str]) -> None:
        """Also (re)decides which frozen results are cached: a cache is only valid for modules that do not train."""
        super().declare_trainable(patterns)
        vision = self.model.vision
        vae_frozen = not any(p.requires_grad for p in vision.vae.parameters())
        semantic_modules = [m for m in (vision.pixel_decoder, vision.latent_embed, vision.encoder) if m is not None]
        self.semantic_frozen = not any(p.requires_grad for m in semantic_modules for p in m.parameters())
        decoder = vision.pixel_decoder
        self.decoder_frozen = decoder is not None and not any(p.requires_grad for p in decoder.parameters())
        on, cap = self.stage_cfg.cache_frozen, self.stage_cfg.cache_max_items
        self.latent_cache = FrozenCache(on and vae_frozen, cap)
        self.semantic_cache = FrozenCache(on and vae_frozen and self.semantic_frozen, cap)
        # while only D is frozen (the encoder trains): D(x1) of clean understanding images
        self.decoded_cache = FrozenCache(on and vae_frozen and self.decoder_frozen and not self.semantic_frozen, cap)

    def _restrict_embedding_grad(self, new_ids: list[int]) -> None:
        """Masks the embedding gradient so only the rows of the added Cheers tokens move (paper: align stage)."""
        weight = self.model.llm.hf.get_input_embeddings().weight
        if not weight.requires_grad:
            warnings.warn("stage.new_token_rows_only is set but the embeddings are not trainable", stacklevel=2)
            return
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        mask[new_ids] = 1.0
        weight.register_hook(lambda grad: grad * mask.to(grad))

    def _flow_times(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        t = sample_t(len(batch), self.stage_cfg.flow, generator=generator, device=self.device)
        return torch.where(batch.task == TASK_GENERATION, t, torch.ones_like(t))

    def _drop_condition(self, batch: Batch) -> torch.Tensor:
        p = self.stage_cfg.cond_drop_prob
        if p <= 0:
            return batch.input_ids
        drop_B = (torch.rand(len(batch), device=self.device) < p) & (batch.task == TASK_GENERATION)
        # the same twin as guidance at sampling time (stage.sampling.unconditional: the prompt, or all text)
        return torch.where(drop_B[:, None], self.pipeline.unconditional_ids(batch), batch.input_ids)

    def _row_keys(self, batch: Batch, rows: torch.Tensor) -> list[str]:
        return [f"{batch.keys[r]}/{int(batch.task[r])}" for r in rows.tolist()]

    def _semantic_context(self) -> Any:
        return torch.no_grad() if self.semantic_frozen else contextlib.nullcontext()

    def losses(
        self, batch: Batch, input_ids: torch.Tensor, t_B: torch.Tensor, x0: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """`L = lm_weight·CE + flow_weight·MSE` of one pass.

        Every image row is tokenised into the LLM: understanding rows from their clean latent (t = 1), generation
        rows from `x_t` of the flow path; the flow head runs on the generation rows only, whose velocity is the
        flow loss (`understanding_zero_target` instead runs it on every image row, as the official code).
        """
        if self.stage_cfg.understanding_zero_target:
            return self._losses_every_image_row(batch, input_ids, t_B, x0)
        model, vision = self.model, self.model.vision
        rows_R = model.image_positions(batch.block_ids)[0]
        keys_R = self._row_keys(batch, rows_R)
        if not rows_R.numel():  # text-only batch: no vision pass, a zero flow loss
            out = model(input_ids, batch.pad_mask, batch.block_ids, None, None, segment_ids=batch.segment_ids)
            return self._total(out.logits, batch.labels, out.velocity.sum())
        x1_R = self.latent_cache(keys_R, lambda i: vision.encode(batch.images[rows_R[i]]), self.device)
        is_gen_R = batch.task[rows_R] == TASK_GENERATION
        gen_G, und_U = is_gen_R.nonzero().squeeze(1), (~is_gen_R).nonzero().squeeze(1)
        weight_G = None
        if not gen_G.numel():
            # no generation row: run the flow head on one understanding row (t = 1) at weight 0, so every rank runs
            # every module each step (FSDP all-gathers per unit; a rank that skipped the head would hang the others)
            gen_G, weight_G = und_U[:1], x1_R.new_zeros(1)

        def clean_decoded(i: list[int]) -> torch.Tensor:
            with torch.no_grad():
                return vision.decode_pixels(x1_R[und_U[i]])

        def clean_semantic(i: list[int]) -> torch.Tensor:
            decoded = None
            if self.decoded_cache.enabled:
                decoded = self.decoded_cache([keys_R[und_U[j]] for j in i], clean_decoded, self.device)
            with self._semantic_context():
                return vision.features(x1_R[und_U[i]], decoded=decoded).semantic

        semantic_U = None
        if und_U.numel():
            semantic_U = self.semantic_cache([keys_R[u] for u in und_U.tolist()], clean_semantic, self.device)

        def network(z_t_G: torch.Tensor, t_G: torch.Tensor) -> Any:
            detail_G = None
            semantic_R = x1_R.new_zeros(rows_R.numel(), vision.encoder.num_tokens, vision.encoder.dim)
            if gen_G.numel():
                with self._semantic_context():
                    feats = vision.features(z_t_G)
                detail_G = feats.detail
                semantic_R = semantic_R.to(feats.semantic.dtype).index_copy(0, gen_G, feats.semantic)
            if semantic_U is not None:
                semantic_R = semantic_R.index_copy(0, und_U, semantic_U.to(semantic_R.dtype))
            tokens_R = vision.compress(semantic_R)
            return model.forward_tokens(
                input_ids,
                batch.pad_mask,
                batch.block_ids,
                tokens_R,
                t_G,
                detail_G,
                gen_G,
                segment_ids=batch.segment_ids,
                z_t_F=z_t_G,
            )

        x0_G = None if x0 is None else x0[rows_R[gen_G]]
        flow = training_losses(
            network,
            x1_R[gen_G],
            t_B[rows_R[gen_G]],
            weight_G,
            x0=x0_G,
            loss_weighting=self.stage_cfg.flow.loss_weighting,
        )
        return self._total(flow.output.logits, batch.labels, flow.loss)

    def _losses_every_image_row(
        self, batch: Batch, input_ids: torch.Tensor, t_B: torch.Tensor, x0: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The official zero-target variant: the flow head on every image row, target 0 on understanding rows."""
        rows_R = self.model.image_positions(batch.block_ids)[0]
        x1_R = self.model.vision.encode(batch.images[rows_R])
        is_gen_R = (batch.task[rows_R] == TASK_GENERATION).float()

        def network(z_t_R: torch.Tensor, t_R: torch.Tensor) -> Any:
            return self.model(input_ids, batch.pad_mask, batch.block_ids, z_t_R, t_R, segment_ids=batch.segment_ids)

        x0_R = None if x0 is None else x0[rows_R]
        # (the config refuses a loss weighting with this variant)
        flow = training_losses(network, x1_R, t_B[rows_R], is_gen_R, x0=x0_R, understanding_zero_target=True)
        return self._total(flow.output.logits, batch.labels, flow.loss)

    def _total(self, logits: torch.Tensor, labels: torch.Tensor, flow: torch.Tensor) -> dict[str, torch.Tensor]:
        lm = lm_loss(logits, labels)
        total = self.stage_cfg.lm_weight * lm + self.stage_cfg.flow_weight * flow
        return {"loss": total, "loss_lm": lm, "loss_flow": flow}

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch, self._drop_condition(batch), self._flow_times(batch))
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch), sync_dist=True
        )
        return losses["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        t_B = self._flow_times(batch, generator)
        h, w = self.model.vision.semantic_grid_hw
        shape = (len(batch), self.model.vision.latent_dim, h, w)
        x0 = torch.randn(shape, generator=generator, device=self.device)
        losses = self.losses(batch, batch.input_ids, t_B, x0=x0)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=len(batch), sync_dist=True)

    # ---- public methods for callbacks and commands (R10) ----

    @torch.no_grad()
    def answer(self, images: torch.Tensor, questions: list[str], max_new_tokens: int = 16) -> list[str]:
        """Greedy, KV-cached answers to one question per image."""
        return self.pipeline.answer(images, questions, max_new_tokens=max_new_tokens)

    @torch.no_grad()
    def generate_images(
        self,
        prompts: list[str],
        seed: int = 0,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        alpha: float | None = None,
        sampler: str | None = None,
        record_gates: bool = False,
    ) -> GenerationResult:
        """Text → images with the stage's sampling defaults (`stage.sampling`) for any argument left None."""
        return self.pipeline.generate(
            prompts,
            seed=seed,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            alpha=alpha,
            sampler=sampler,
            record_gates=record_gates,
        )

    @torch.no_grad()
    def contrastive_embed(
        self, images: torch.Tensor | None, texts: list[str] | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Joint-space embeddings of the tokenizer-stage towers: images through the understanding path
        (encoder(D(z1))), captions through the text tower.

        Raises:
            ValueError: when `model.contrastive` is not configured.
        """
        towers = self.model.contrastive
        if towers is None:
            raise ValueError("contrastive_embed needs model.contrastive (the tokenizer stage's text tower)")
        img_emb = txt_emb = None
        if images is not None:
            vision = self.model.vision
            img_emb = towers.embed_images(vision.features(vision.encode(images)).semantic)
        if texts is not None:
            enc = self.text_tokenizer(
                list(texts), padding=True, truncation=True, max_length=towers.cfg.max_len, return_tensors="pt"
            )
            ids, mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device).bool()
            txt_emb = towers.embed_texts(ids, mask)
        return img_emb, txt_emb

    @torch.no_grad()
    def semantic_features(self, images: torch.Tensor) -> torch.Tensor:
        """Mean-pooled semantic-encoder features of pixels B×3×H×W in [-1, 1] (the `semantic` FID network)."""
        return self.model.vision.encoder(images).mean(dim=1)
