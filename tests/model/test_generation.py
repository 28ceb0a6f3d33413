"""Tests for cheers_pl.model.generation: the prompt-cached (guided) velocity field of an image block."""

import pytest
import torch

from cheers_pl.data.batch import left_pad
from cheers_pl.model.cheers import CheersConfig
from cheers_pl.model.flow_head import FlowHeadConfig
from cheers_pl.model.generation import PromptVelocity
from cheers_pl.pipeline import CheersPipeline
from tests._models import perturbed_pipeline

PROMPTS = ["a red circle", "two blue squares left of a green circle"]
ATOL = 1e-5  # fp32: cached and uncached runs differ only by summation order


@pytest.fixture(scope="module")
def pipe() -> CheersPipeline:
    pipe = perturbed_pipeline()
    pipe.model.eval()
    return pipe


def latent(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 32, 8, 8, generator=g), torch.tensor([0.2, 0.7])


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_cached_velocity_equals_uncached(pipe: CheersPipeline, guidance_scale: float) -> None:
    z, t = latent()
    cached = pipe.velocity_fn(PROMPTS, guidance_scale, use_cache=True)
    uncached = pipe.velocity_fn(PROMPTS, guidance_scale, use_cache=False)
    v = cached(z, t)
    torch.testing.assert_close(v, uncached(z, t), atol=ATOL, rtol=0)
    # the cache is truncated back to the prompt: a second call (other latent) still matches
    z2, _ = latent(5)
    torch.testing.assert_close(cached(z2, t), uncached(z2, t), atol=ATOL, rtol=0)
    assert cached.cache.get_seq_length() == cached.prompt_len
    assert v.abs().amax() > 0


def test_guidance_scale_one_is_conditional_and_matches_training_forward(pipe: CheersPipeline) -> None:
    """Sampling velocity at s = 1 equals the training forward's velocity on the same z_t, so the two paths agree."""
    model, b = pipe.model, pipe.builder
    batch = left_pad([b.generation(p) for p in PROMPTS], b.ids["pad"])
    z_t, t = latent(4)
    with torch.no_grad():
        out = model(batch.input_ids, batch.pad_mask, batch.block_ids, z_t, t)
    v1 = pipe.velocity_fn(PROMPTS, 1.0)(z_t, t)
    torch.testing.assert_close(v1, out.velocity, atol=ATOL, rtol=0)
    # linear in s: v(s) = v_u + s·(v_c − v_u), with v(1) the conditional velocity
    v0 = pipe.velocity_fn(PROMPTS, 0.0)(z_t, t)
    v3 = pipe.velocity_fn(PROMPTS, 3.0)(z_t, t)
    torch.testing.assert_close(v3, v0 + 3.0 * (v1 - v0), atol=1e-4, rtol=0)
    assert (v1 - v0).abs().amax() > 1e-4  # the condition matters


def test_batch_mismatch_and_odd_guided_batch(pipe: CheersPipeline) -> None:
    z, t = latent()
    with pytest.raises(ValueError, match="built for 2 prompts"):
        pipe.velocity_fn(PROMPTS, 2.0)(z[:1], t[:1])
    ids = torch.zeros(3, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="conditional then unconditional"):
        PromptVelocity(pipe.model, ids, torch.ones_like(ids, dtype=torch.bool), guidance_scale=2.0)


@pytest.mark.parametrize("use_cache", [True, False])
def test_pooled_prompt_head_matches_training_forward_and_sees_the_prompt(use_cache: bool) -> None:
    """With `flow_head.prompt_condition=pooled` (and `latent_skip`) the sampler pools the same prompt positions and
    passes the same z_t as the training forward (cached or not), and the pooled prompt moves the velocity."""
    cfg = CheersConfig(flow_head=FlowHeadConfig(prompt_condition="pooled", latent_skip=True))
    pooled = perturbed_pipeline(cfg=cfg)
    pooled.model.eval()
    model, b = pooled.model, pooled.builder
    batch = left_pad([b.generation(p) for p in PROMPTS], b.ids["pad"])
    z_t, t = latent(4)
    with torch.no_grad():
        out = model(batch.input_ids, batch.pad_mask, batch.block_ids, z_t, t)
        v1 = pooled.velocity_fn(PROMPTS, 1.0, use_cache=use_cache)(z_t, t)
        torch.testing.assert_close(v1, out.velocity, atol=ATOL, rtol=0)
        model.flow_head.prompt_embed1.weight.zero_()
        model.flow_head.prompt_embed2.weight.zero_()
        assert not torch.allclose(pooled.velocity_fn(PROMPTS, 1.0, use_cache=use_cache)(z_t, t), v1, atol=1e-4)
