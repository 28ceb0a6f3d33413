"""Tests of the tokenizer stage: declared trainables, loss wiring, statistics refresh, public API."""

import types

import pytest
import torch

from cheers_pl.config import ExperimentConfig
from cheers_pl.data.batch import Batch
from cheers_pl.data.datamodule import DataConfig
from cheers_pl.data.synthetic_scene import Scene
from cheers_pl.model.contrastive_towers import ContrastiveTowersConfig
from cheers_pl.model.vae import VAEConfig
from cheers_pl.model.vision_encoder import VisionEncoderConfig
from cheers_pl.model.vision_tokenizer import VisionTokenizerConfig
from cheers_pl.stage.tokenizer import TokenizerStage, TokenizerStageConfig

CAPTIONS = ["a red circle on the left", "two blue squares", "a green striped triangle", "one yellow star at top"]


def _tokenizer_cfg() -> VisionTokenizerConfig:
    return VisionTokenizerConfig(
        vae=VAEConfig(block_out_channels=[8, 16], norm_num_groups=4, latent_channels=4),
        encoder=VisionEncoderConfig(image_size=32, patch_size=4, dim=16, num_layers=1, num_heads=2, mlp_dim=32),
        llm_dim=16,
    )


def _cfg(shard_dir, contrastive: bool = True, **stage) -> ExperimentConfig:
    towers = ContrastiveTowersConfig(dim=16, num_layers=1, embed_dim=16, max_len=32) if contrastive else None
    return ExperimentConfig(
        name="t",
        data=DataConfig(shard_dir=str(shard_dir), image_size=32),
        model=types.SimpleNamespace(vision=_tokenizer_cfg(), contrastive=towers),
        stage=TokenizerStageConfig(**stage),
    )


def _batch(n: int = 4, text_rows: int = 0) -> Batch:
    images = torch.rand(n, 3, 32, 32) * 2 - 1
    task = torch.zeros(n, dtype=torch.long)
    task[:text_rows] = 2
    z = torch.zeros(n, 1, dtype=torch.long)
    meta = [{"caption": CAPTIONS[i % len(CAPTIONS)]} for i in range(n)]
    return Batch(images, task, z, z, z.bool(), z, z.bool(), [str(i) for i in range(n)], meta, {})


def _one_step(stage: TokenizerStage, batch: Batch) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in stage.named_parameters()}
    opt = torch.optim.SGD([p for _, p in stage.trainable_parameters()], lr=0.1)
    stage.train()
    loss = stage._total(stage.compute_losses(batch))
    loss.backward()
    opt.step()
    return {n: p for n, p in before.items() if not torch.equal(p, dict(stage.named_parameters())[n])}


def test_one_step_changes_exactly_the_declared_parameters(shard_dir) -> None:
    stage = TokenizerStage(_cfg(shard_dir))
    changed = _one_step(stage, _batch())
    declared = {n for n, _ in stage.trainable_parameters()}
    # attention key biases get exactly zero gradient (softmax is shift-invariant), so they cannot move
    assert set(changed) <= declared and all(n.endswith("to_k.bias") for n in declared - set(changed))
    prefixes = (
        "model.vision.vae.",
        "model.vision.pixel_decoder.",
        "model.vision.encoder.",
        "model.contrastive.",
    )
    assert all(any(n.startswith(p) for n in changed) for p in prefixes)
    assert not any(n.startswith("model.vision.compressor.") for n in changed)


def test_frozen_vae_is_untouched_without_train_vae(shard_dir) -> None:
    trainable = ["model.vision.pixel_decoder.*", "model.vision.encoder.*", "model.contrastive.*"]
    stage = TokenizerStage(_cfg(shard_dir, train_vae=False, refresh_stats_every=0, trainable=trainable))
    vae_state = {k: v.clone() for k, v in stage.model.vision.vae.state_dict().items()}
    changed = _one_step(stage, _batch())
    assert changed and not any(n.startswith("model.vision.vae.") for n in changed)
    assert all(torch.equal(v, stage.model.vision.vae.state_dict()[k]) for k, v in vae_state.items())
    assert "vae_l1" not in stage.compute_losses(_batch())


def test_trainable_errors_name_the_key(shard_dir) -> None:
    with pytest.raises(ValueError, match="model.vision.nope"):
        TokenizerStage(_cfg(shard_dir, trainable=["model.vision.nope.*"]))
    with pytest.raises(ValueError, match="no active loss"):  # encoder declared but no contrastive towers
        TokenizerStage(_cfg(shard_dir, contrastive=False, trainable=["model.vision.*"]))
    with pytest.raises(ValueError, match="train_vae"):
        TokenizerStage(_cfg(shard_dir, trainable=["model.vision.pixel_decoder.*"]))
    with pytest.raises(ValueError, match="lpips_weights"):
        TokenizerStageConfig(lpips_weights="/no/such/lpips.pth")
    with pytest.raises(ValueError, match="decoder_loss"):
        TokenizerStageConfig(decoder_loss="l3")


@pytest.mark.parametrize(
    ("stage_kwargs", "decreasing"),
    [
        ({}, ("vae_l1", "decoder")),
        (  # VAE and D frozen: the encoder's input is fixed, so the contrastive loss alone must fall
            {
                "train_vae": False,
                "refresh_stats_every": 0,
                "trainable": ["model.vision.encoder.*", "model.contrastive.*"],
            },
            ("contrastive",),
        ),
    ],
)
def test_losses_finite_and_decreasing_on_a_fixed_batch(shard_dir, stage_kwargs: dict, decreasing: tuple) -> None:
    stage = TokenizerStage(_cfg(shard_dir, **stage_kwargs)).train()
    batch = _batch(6, text_rows=2)  # text-only rows are dropped
    opt = torch.optim.Adam([p for _, p in stage.trainable_parameters()], lr=2e-3)
    history = []
    for _ in range(8):
        losses = stage.compute_losses(batch, torch.Generator().manual_seed(0))
        assert {"decoder", "contrastive"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        stage._total(losses).backward()
        opt.step()
    for key in decreasing:
        assert history[-1][key] < 0.95 * history[0][key], key


def test_refresh_statistics_sets_population_moments(shard_dir) -> None:
    stage = TokenizerStage(_cfg(shard_dir)).train()
    batch = _batch()
    stage.compute_losses(batch)
    assert stage.refresh_statistics()
    vae = stage.model.vision.vae
    with torch.no_grad():
        z = vae.encode(batch.images)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (z.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-2
    assert not stage.refresh_statistics()  # nothing gathered since


def test_reconstruct_and_contrastive_embed(shard_dir) -> None:
    stage = TokenizerStage(_cfg(shard_dir)).eval()
    images = _batch().images
    out = stage.reconstruct(images, t_values=(1.0, 0.5), seed=3)
    assert set(out) == {"vae", "decoder_t1.0", "decoder_t0.5"}
    assert all(v.shape == images.shape for v in out.values())
    assert torch.equal(stage.reconstruct(images, (0.5,), seed=3)["decoder_t0.5"], out["decoder_t0.5"])
    assert not torch.equal(stage.reconstruct(images, (0.5,), seed=4)["decoder_t0.5"], out["decoder_t0.5"])
    img, txt = stage.contrastive_embed(images, CAPTIONS)
    assert img.shape == txt.shape == (4, 16)
    with pytest.raises(ValueError, match="contrastive"):
        TokenizerStage(
            _cfg(shard_dir, contrastive=False, trainable=["model.vision.vae.*", "model.vision.pixel_decoder.*"])
        ).contrastive_embed(images, CAPTIONS)


def test_token_attribute_loss_trains_encoder_and_heads_and_counts_rows_without_a_scene(shard_dir) -> None:
    trainable = ["model.vision.encoder.*", "model.attribute_heads.*"]
    stage = TokenizerStage(_cfg(shard_dir, contrastive=False, train_vae=False, decoder_weight=0.0,
                                attribute_weight=1.0, contrastive_input="pixels", trainable=trainable))  # fmt: skip
    batch = _batch(4)
    scene = {"image_size": 64, "objects": [{"shape": "circle", "color": "red", "size": "large", "x": 20, "y": 40}]}
    for meta in batch.meta[:3]:
        meta["scene"] = scene
    losses = stage.compute_losses(batch)
    assert set(losses) == {"attributes"} and losses["attributes"] > 0 and stage.unlabelled_rows == 1
    changed = _one_step(stage, batch)
    assert any(n.startswith("model.attribute_heads.") for n in changed)
    assert any(n.startswith("model.vision.encoder.") for n in changed)
    assert not any(n.startswith(("model.vision.vae.", "model.vision.pixel_decoder.")) for n in changed)
    acc = stage.attribute_accuracy(batch.images[:1], [Scene.from_json(scene)])
    assert set(acc) == {"shape", "color", "texture", "size", "digit"} and all(0 <= v <= 1 for v in acc.values())
    with pytest.raises(ValueError, match="no active loss"):
        TokenizerStage(_cfg(shard_dir, contrastive=False, train_vae=False, decoder_weight=0.0,
                            trainable=["model.vision.encoder.*"]))  # fmt: skip


@pytest.mark.parametrize("reaches", [True, False])
def test_contrastive_loss_reaches_the_encoder_only_when_told(shard_dir, reaches: bool) -> None:
    """`contrastive_trains_encoder=false` trains the towers on the encoder's tokens and leaves the encoder to the
    other losses (here none: it must not move)."""
    trainable = ["model.vision.encoder.*", "model.contrastive.*"]
    stage = TokenizerStage(_cfg(shard_dir, train_vae=False, decoder_weight=0.0, contrastive_input="pixels",
                                contrastive_trains_encoder=reaches, trainable=trainable))  # fmt: skip
    changed = _one_step(stage, _batch())
    assert any(n.startswith("model.contrastive.") for n in changed)
    assert any(n.startswith("model.vision.encoder.") for n in changed) == reaches
