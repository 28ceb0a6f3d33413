"""The `tokenizer` stage: pretraining of the unified vision tokenizer (Cheers §3.1, DESIGN.md §2).

Three losses, each switched on by config and each training its own components (declared by `stage.trainable`):
(a) VAE (`train_vae`, when not pretrained): L1 reconstruction of a posterior sample + β·KL (mean per latent
    element), + LPIPS when `lpips_weights` is a local file. Every `refresh_stats_every` steps (and at the last
    step) the BatchNorm normaliser statistics are recomputed exactly from the posterior means of the training
    batches seen since the previous refresh, summed over ranks.
(b) Pixel decoder D: reconstructs the CLEAN image from `D(z_t)`, z_t = t·x1 + (1−t)·x0, with t = 1 for a fraction
    `clean_prob` of the images (the understanding input, whose fidelity PSNR measures) and t ~ U(t_min, 1)
    otherwise (what D sees during generation). `decoder_loss` "l1" (sharper, the default) or "mse".
The loss functions and D's t-sampler are `cheers_pl.objective.reconstruction`; this module only orchestrates them.
(c) Semantic encoder + text tower (when `model.contrastive` is set): sigmoid contrastive loss between the encoder's
    mean-pooled tokens of `D(z_t)` (detached: the contrastive loss never trains D) and the captions.
(d) Semantic encoder + token-attribute heads (`attribute_weight` > 0, synthetic shards): per token, the attributes of
    the object under it (`cheers_pl.data.synthetic_labels`), a linear head per attribute, on the same tokens as (c):
    the dense stand-in for SigLIP 2's dense captioning, so that every token carries its object's shape, colour,
    texture, size and digit for the LLM to read. Rows without a scene description are left out and counted.
D is a copy of the VAE decoder made at construction. When the VAE trains in the same run, D trains jointly on the
current VAE's latents (no reset needed); `reset_pixel_decoder=true` re-copies D from the VAE after `init_from`
(e.g. a second run that starts from a VAE-only run).

Text-only examples (no image) are dropped from the batch; the tiny experiment draws only image examples.
Shape legend: B batch, H/W image side, P latent channels, h/w latent grid, N semantic tokens, C encoder width,
E joint embedding width, L caption length.

References:
    Cheers, arXiv 2603.12793, §3.1; SigLIP, arXiv 2303.15343.
"""

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cheers_pl.data.batch import Batch
from cheers_pl.data.synthetic_labels import ATTRIBUTES, attribute_classes, token_attribute_labels
from cheers_pl.data.synthetic_scene import Scene
from cheers_pl.data.tasks import TASK_TEXT
from cheers_pl.data.text_tokenizer import load_text_tokenizer
from cheers_pl.model.attribute_heads import AttributeHeads, AttributeHeadsConfig
from cheers_pl.model.contrastive_towers import ContrastiveTowers
from cheers_pl.model.vision_tokenizer import VisionTokenizer
from cheers_pl.objective.flow_matching import interpolate, noise_like
from cheers_pl.objective.lm import IGNORE_INDEX
from cheers_pl.objective.reconstruction import (
    DECODER_LOSSES,
    LPIPS_NETS,
    build_lpips,
    decoder_loss,
    decoder_times,
    vae_losses,
)
from cheers_pl.objective.token_labels import token_classification_loss
from cheers_pl.optim import OptimConfig
from cheers_pl.stage.base import StageConfig, StageModule

CONTRASTIVE_INPUTS = ("decoded", "pixels")
# parameter-name prefix -> the losses that train it (a trainable parameter outside these gets no gradient here)
LOSS_OF_PREFIX = {
    "model.vision.vae.": ("vae",),
    "model.vision.pixel_decoder.": ("decoder",),
    "model.vision.encoder.": ("contrastive", "attributes"),
    "model.vision.latent_embed.": ("contrastive", "attributes"),
    "model.contrastive.": ("contrastive",),
    "model.attribute_heads.": ("attributes",),
}


@dataclass
class TokenizerStageConfig(StageConfig):
    """Loss weights and switches of the tokenizer stage (defaults: tiny preset, everything from scratch)."""

    name: str = "tokenizer"
    trainable: list[str] = field(
        default_factory=lambda: [
            "model.vision.vae.*", "model.vision.pixel_decoder.*", "model.vision.encoder.*",
            "model.contrastive.*",
        ]
    )  # fmt: skip
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_frac=0.02))
    train_vae: bool = True  # full preset: false (pretrained FLUX.2 VAE)
    vae_l1_weight: float = 1.0
    vae_kl_weight: float = 1e-6  # β on the per-element KL
    lpips_weights: str | None = None  # local state dict of torchmetrics' LPIPS net (backbone + lin layers); None = off
    lpips_net: str = "vgg"  # "vgg" | "alex" | "squeeze": architecture of `lpips_weights`
    lpips_weight: float = 0.1
    refresh_stats_every: int = 50  # steps between normaliser refreshes while the VAE trains; 0 = never
    decoder_weight: float = 1.0
    decoder_loss: str = "l1"  # "l1" | "mse"
    t_min: float = 0.5  # D's noisy inputs use t ~ U(t_min, 1)
    clean_prob: float = 0.5  # fraction of images decoded from the clean latent (t = 1)
    contrastive_weight: float = 1.0
    # what the encoder sees in the contrastive loss: "decoded" = D(z_t) (the path it serves), "pixels" = the clean
    # image (no VAE or D pass: cheap enough for the large batches sigmoid contrastive learning wants)
    contrastive_input: str = "decoded"
    attribute_weight: float = 0.0  # token-attribute loss (d); needs shards with scene descriptions (synthetic)
    # False: the contrastive loss trains the towers on the encoder's tokens without reaching the encoder (a mean-pooled
    # contrastive target rewards writing the whole scene into every token, which the LLM then answers from; issue 12)
    contrastive_trains_encoder: bool = True
    reset_pixel_decoder: bool = False  # re-copy D from the VAE decoder after `init_from`

    def __post_init__(self) -> None:
        weights = ("vae_l1_weight", "vae_kl_weight", "lpips_weight", "decoder_weight", "contrastive_weight")
        for name in (*weights, "attribute_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"stage.{name} must be >= 0, got {getattr(self, name)}")
        if self.decoder_loss not in DECODER_LOSSES:
            raise ValueError(f"stage.decoder_loss={self.decoder_loss!r} is not one of {DECODER_LOSSES}")
        if not 0.0 <= self.t_min <= 1.0:
            raise ValueError(f"stage.t_min must be in [0, 1], got {self.t_min}")
        if not 0.0 <= self.clean_prob <= 1.0:
            raise ValueError(f"stage.clean_prob must be in [0, 1], got {self.clean_prob}")
        if self.refresh_stats_every < 0:
            raise ValueError(f"stage.refresh_stats_every must be >= 0, got {self.refresh_stats_every}")
        if self.lpips_weights is not None and not Path(self.lpips_weights).is_file():
            raise ValueError(f"stage.lpips_weights={self.lpips_weights!r}: no such file")
        if self.contrastive_input not in CONTRASTIVE_INPUTS:
            raise ValueError(f"stage.contrastive_input={self.contrastive_input!r} is not one of {CONTRASTIVE_INPUTS}")
        if self.lpips_net not in LPIPS_NETS:
            raise ValueError(f"stage.lpips_net={self.lpips_net!r} is not one of {LPIPS_NETS}")


class TokenizerStage(StageModule):
    """Orchestrates the VAE, pixel-decoder and contrastive losses over `model.vision` / `model.contrastive`."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        scfg: TokenizerStageConfig = cfg.stage
        self.model = nn.Module()  # container: checkpoint keys model.vision.* / model.contrastive.* (R5)
        self.model.vision = VisionTokenizer(cfg.model.vision)
        towers_cfg = getattr(cfg.model, "contrastive", None)
        self.text_tokenizer = None
        if towers_cfg is not None:
            self.text_tokenizer = load_text_tokenizer(cfg.data.text_tokenizer_path())
            towers_cfg = replace(towers_cfg, vocab_size=len(self.text_tokenizer))
            self.model.contrastive = ContrastiveTowers(towers_cfg, self.model.vision.encoder.dim)
        else:
            self.model.contrastive = None
        self.model.attribute_heads = None
        if scfg.attribute_weight > 0:
            classes = attribute_classes(cfg.data.synthetic)
            num_classes = tuple(len(classes[a]) for a in ATTRIBUTES)
            self.model.attribute_heads = AttributeHeads(
                AttributeHeadsConfig(self.model.vision.encoder.dim, num_classes)
            )
        self.unlabelled_rows = 0  # rows the attribute loss left out (no scene description)
        self.lpips = build_lpips(scfg.lpips_weights, scfg.lpips_net) if scfg.lpips_weights else None
        if scfg.train_vae and scfg.refresh_stats_every == 0:
            warnings.warn(
                "stage.refresh_stats_every=0: the VAE trains but its normaliser keeps its statistics", stacklevel=2
            )
        if scfg.contrastive_input == "pixels" and self.model.vision.pixel_decoder is None:
            raise ValueError(
                "stage.contrastive_input='pixels' needs model.vision.encoder_input='pixels' (the encoder reads latents)"
            )
        self._moments: torch.Tensor | None = None
        self.setup_trainable()
        if scfg.reset_pixel_decoder:
            self.model.vision.reset_pixel_decoder()
        self._check_losses_reach_trainable()

    def _active_losses(self) -> set[str]:
        scfg, tok = self.stage_cfg, self.model.vision
        active = {"vae"} if scfg.train_vae else set()
        if scfg.decoder_weight > 0 and tok.pixel_decoder is not None:
            active.add("decoder")
        if scfg.contrastive_weight > 0 and self.model.contrastive is not None:
            active.add("contrastive")
        if self.model.attribute_heads is not None:
            active.add("attributes")
        return active

    def _check_losses_reach_trainable(self) -> None:
        active = self._active_losses()
        names = [n for n, _ in self.trainable_parameters()]
        for name in names:
            losses = next((v for k, v in LOSS_OF_PREFIX.items() if name.startswith(k)), ())
            if not set(losses) & active:
                raise ValueError(
                    f"stage.trainable selects {name!r}, but no active loss of the tokenizer stage trains it "
                    f"(active: {sorted(active)}; check train_vae, *_weight and model.contrastive)"
                )
        if self.stage_cfg.train_vae and not any(n.startswith("model.vision.vae.") for n in names):
            raise ValueError("stage.train_vae=true but stage.trainable selects no model.vision.vae.* parameter")

    # ---------------------------------------------------------------- losses
    def tokenize_captions(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → (ids B,L, pad_mask B,L) truncated to `model.contrastive.max_len`."""
        if self.text_tokenizer is None:
            raise ValueError("contrastive towers are not configured (model.contrastive is null)")
        enc = self.text_tokenizer(
            texts, padding=True, truncation=True, max_length=self.model.contrastive.cfg.max_len, return_tensors="pt"
        )
        return enc["input_ids"].to(device), enc["attention_mask"].to(device).bool()

    def _vae_losses(self, images: torch.Tensor, sample: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        vae = self.model.vision.vae
        posterior = vae.autoencoder.encode(images).latent_dist
        raw_BChw = posterior.sample() if sample else posterior.mode()
        recon = vae.decode_raw(raw_BChw)
        losses = vae_losses(recon, images, posterior.kl(), raw_BChw[0].numel())
        if self.lpips is not None:
            losses["vae_lpips"] = self.lpips(recon.clamp(-1, 1), images).mean()
        return losses, posterior.mode().detach()

    def compute_losses(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Unweighted losses of a batch (`vae_l1`, `vae_kl`, [`vae_lpips`], `decoder`, `contrastive`)."""
        scfg, vision = self.stage_cfg, self.model.vision
        keep = [i for i, task in enumerate(batch.task.tolist()) if task != TASK_TEXT]
        if not keep:
            return {}
        images = batch.images[keep]
        losses: dict[str, torch.Tensor] = {}
        active = self._active_losses()
        pixels_only = scfg.contrastive_input == "pixels"
        encodes = bool({"contrastive", "attributes"} & active)  # the encoder runs (on the contrastive input)
        needs_latent = "vae" in active or "decoder" in active or (encodes and not pixels_only)
        x1 = None
        if scfg.train_vae:
            vae_terms, raw_mean = self._vae_losses(images, sample=generator is None)
            losses.update(vae_terms)
            if self.training:
                m = vision.vae.latent_moments(raw_mean, source="latents")
                self._moments = m if self._moments is None else self._moments + m
            x1 = vision.vae.from_raw(raw_mean)
        elif needs_latent:
            x1 = vision.encode(images)
        decoded = z_t = None
        if "decoder" in active or (encodes and not pixels_only):
            t_B = decoder_times(images.shape[0], scfg.clean_prob, scfg.t_min, generator, images.device)
            z_t = interpolate(noise_like(x1, generator), x1, t_B)
            decoded = vision.decode_pixels(z_t) if vision.pixel_decoder is not None else None
        if "decoder" in active:
            losses["decoder"] = decoder_loss(decoded, images, scfg.decoder_loss)
        if not encodes:
            return losses
        if pixels_only:
            semantic = vision.encoder(images)
        else:
            semantic = vision.features(z_t, None if decoded is None else decoded.detach()).semantic
        if "contrastive" in active:
            towers = self.model.contrastive
            ids, mask = self.tokenize_captions([str(batch.meta[i]["caption"]) for i in keep], images.device)
            pooled = semantic if scfg.contrastive_trains_encoder else semantic.detach()
            losses["contrastive"] = towers.loss(towers.embed_images(pooled), towers.embed_texts(ids, mask))
        if "attributes" in active:
            labels = self._attribute_labels([batch.meta[i] for i in keep], images.device)
            losses["attributes"] = token_classification_loss(self.model.attribute_heads(semantic), labels)
        return losses

    def _attribute_labels(self, metas: list[dict], device: torch.device) -> torch.Tensor:
        """Token-attribute labels B×A×M of the rows' scenes; rows without a scene are all IGNORE_INDEX (counted)."""
        grid = self.model.vision.semantic_grid_hw[0]
        world = self.cfg.data.synthetic
        rows = []
        for meta in metas:
            if isinstance(meta.get("scene"), dict):
                labels = token_attribute_labels(Scene.from_json(meta["scene"]), world, grid)
                rows.append(torch.from_numpy(labels).flatten(1))
            else:
                self.unlabelled_rows += 1
                rows.append(torch.full((len(ATTRIBUTES), grid * grid), IGNORE_INDEX, dtype=torch.long))
        return torch.stack(rows).to(device)

    def _total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.stage_cfg
        weights = {
            "vae_l1": s.vae_l1_weight, "vae_kl": s.vae_kl_weight, "vae_lpips": s.lpips_weight,
            "decoder": s.decoder_weight, "contrastive": s.contrastive_weight, "attributes": s.attribute_weight,
        }  # fmt: skip
        return sum(weights[k] * v for k, v in losses.items())

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        losses = self.compute_losses(batch)
        if not losses:
            return None
        total = self._total(losses)
        n = len(batch)
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        if self.model.attribute_heads is not None:  # cumulative: rows the attribute loss could not label
            self.log("data/attribute_unlabelled_rows", float(self.unlabelled_rows), batch_size=n)
        self.log_dict({f"train/loss_{k}": v for k, v in losses.items()}, batch_size=n)
        every = self.stage_cfg.refresh_stats_every
        step = self.trainer.global_step + 1 if self._trainer is not None else 0
        last = self._trainer is not None and step == self.trainer.max_steps
        if self.stage_cfg.train_vae and every > 0 and (step % every == 0 or last):
            self.refresh_statistics()
        return total

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        generator = torch.Generator(device=batch.images.device).manual_seed(self.cfg.seed + batch_idx)
        losses = self.compute_losses(batch, generator)
        if not losses:
            return
        n = len(batch)
        self.log("val/loss", self._total(losses), prog_bar=True, batch_size=n, sync_dist=True)
        self.log_dict({f"val/loss_{k}": v for k, v in losses.items()}, batch_size=n, sync_dist=True)

    # ---------------------------------------------------------------- normaliser statistics
    @torch.no_grad()
    def refresh_statistics(self) -> bool:
        """Sets the VAE normaliser from the latent moments gathered since the last refresh (summed over ranks).

        Returns:
            Whether statistics were set (False when no training batch was seen since the last refresh).
        """
        if self._moments is None:
            return False
        moments = self._moments
        if self._trainer is not None:
            moments = self.trainer.strategy.reduce(moments, reduce_op="sum")
        self.model.vision.vae.set_statistics(moments)
        self._moments = None
        return True

    def on_train_end(self) -> None:
        if self.stage_cfg.train_vae and self.stage_cfg.refresh_stats_every > 0:
            self.refresh_statistics()

    # ---------------------------------------------------------------- public API for callbacks
    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, t_values: tuple[float, ...] = (1.0, 0.5), seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Reconstructions B,3,H,W: "vae" (VAE round trip) and "decoder_t{t}" = D(z_t) for each t (same noise)."""
        vision = self.model.vision
        x1 = vision.encode(images)
        out = {"vae": vision.vae.decode(x1)}
        if vision.pixel_decoder is None:
            return out
        for t in t_values:
            x0 = noise_like(x1, torch.Generator(device=images.device).manual_seed(seed))
            z_t = interpolate(x0, x1, torch.full((images.shape[0],), float(t), device=images.device))
            out[f"decoder_t{float(t)}"] = vision.decode_pixels(z_t)
        return out

    @torch.no_grad()
    def attribute_accuracy(self, images: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
        """Accuracy of the token-attribute heads per attribute on the tokens an object covers (clean images)."""
        if self.model.attribute_heads is None:
            raise ValueError("attribute_accuracy needs stage.attribute_weight > 0 (the token-attribute heads)")
        labels = self._attribute_labels([{"scene": s.to_json()} for s in scenes], images.device)
        logits = self.model.attribute_heads(self.model.vision.encoder(images))
        covered = labels[:, 0] > 0
        return {
            name: round(((lg.argmax(-1) == labels[:, a]) & covered).sum().item() / max(1, int(covered.sum())), 4)
            for a, (name, lg) in enumerate(zip(ATTRIBUTES, logits, strict=True))
        }

    @torch.no_grad()
    def contrastive_embed(self, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint-space embeddings (image B,E of the understanding path D(x1) → encoder; caption B',E)."""
        if self.model.contrastive is None:
            raise ValueError("contrastive_embed needs model.contrastive (the text tower) to be configured")
        vision = self.model.vision
        img_emb = self.model.contrastive.embed_images(vision.features(vision.encode(images)).semantic)
        ids, mask = self.tokenize_captions(list(texts), images.device)
        return img_emb, self.model.contrastive.embed_texts(ids, mask)
