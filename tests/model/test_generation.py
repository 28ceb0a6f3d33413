"""Tests for cheers_pl.model.generation: prompt-cached guided velocity and seeded generation."""

import copy

import pytest
import torch

from cheers_pl.data.text_tokenizer import NO_MEAN, train_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel
from cheers_pl.model.generation import PromptVelocity, left_pad

PROMPTS = ["a red circle", "two blue squares left of a green circle"]
ATOL = 1e-5  # fp32: cached and uncached runs differ only by summation order


@pytest.fixture(scope="module")
def model() -> CheersModel:
    """Tiny random model with its zero-initialised layers (adaLN, flow output, HFI gate) perturbed."""
    torch.manual_seed(0)
    texts = ["a red circle left of a blue square", "two green squares"] * 10
    model = CheersModel(CheersConfig(), train_tokenizer(texts, vocab_size=300))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0.0, 0.05)
    return model.eval()


def latent(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 32, 8, 8, generator=g), torch.tensor([0.2, 0.7])


def test_unconditional_prompt_blanks_exactly_the_prompt_text(model: CheersModel) -> None:
    fn = PromptVelocity(model, PROMPTS, guidance_scale=4.0, use_cache=False)
    ids, pm = fn.input_ids, fn.prompt_mask
    cond, uncond = ids[:2], ids[2:]
    assert uncond.shape == cond.shape
    no_mean = model.sequence_builder.ids[NO_MEAN]
    assert (uncond[pm[2:]] == no_mean).all() and (uncond[~pm[2:]] == cond[~pm[:2]]).all()
    assert (cond != no_mean).all()
    for row, prompt in enumerate(PROMPTS):
        text_ids = model.text_tokenizer(prompt, add_special_tokens=False).input_ids
        assert cond[row][pm[row]].tolist() == text_ids
    assert fn.input_ids.shape[0] == 2 * len(PROMPTS)
    assert PromptVelocity(model, PROMPTS, guidance_scale=1.0).input_ids.shape[0] == len(PROMPTS)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_cached_velocity_equals_uncached(model: CheersModel, guidance_scale: float) -> None:
    z, t = latent()
    cached = model.velocity_fn(PROMPTS, guidance_scale, use_cache=True)
    uncached = model.velocity_fn(PROMPTS, guidance_scale, use_cache=False)
    v = cached(z, t)
    torch.testing.assert_close(v, uncached(z, t), atol=ATOL, rtol=0)
    # the cache is truncated back to the prompt: a second call (other latent) still matches
    z2, _ = latent(5)
    torch.testing.assert_close(cached(z2, t), uncached(z2, t), atol=ATOL, rtol=0)
    assert cached.cache.get_seq_length() == cached.prompt_len
    assert v.abs().amax() > 0


def test_guidance_scale_one_is_conditional_and_matches_training_forward(model: CheersModel) -> None:
    """Sampling velocity at s = 1 equals the training forward's velocity on the same z_t, so the two paths agree."""
    b = model.sequence_builder
    ids, pad, blocks, _ = left_pad([b.generation(p) for p in PROMPTS], b.ids["pad"])
    t = torch.tensor([0.2, 0.7])
    imgs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        out = model(ids, pad, blocks, imgs, t)
    v1 = model.velocity_fn(PROMPTS, 1.0)(out.z_t, t)
    torch.testing.assert_close(v1, out.velocity, atol=ATOL, rtol=0)
    # linear in s: v(s) = v_u + s·(v_c − v_u), with v(1) the conditional velocity
    v0 = model.velocity_fn(PROMPTS, 0.0)(out.z_t, t)
    v3 = model.velocity_fn(PROMPTS, 3.0)(out.z_t, t)
    torch.testing.assert_close(v3, v0 + 3.0 * (v1 - v0), atol=1e-4, rtol=0)
    assert (v1 - v0).abs().amax() > 1e-4  # the condition matters


def test_velocity_fn_batch_mismatch(model: CheersModel) -> None:
    z, t = latent()
    with pytest.raises(ValueError, match="built for 2 prompts"):
        model.velocity_fn(PROMPTS, 2.0)(z[:1], t[:1])


def test_generate_seeded_shapes_range_and_gates(model: CheersModel) -> None:
    kwargs = dict(num_steps=3, guidance_scale=2.0, alpha=0.5)
    a = model.generate(PROMPTS, seed=0, record_gates=True, **kwargs)
    b = model.generate(PROMPTS, seed=0, use_cache=False, **kwargs)
    c = model.generate(PROMPTS, seed=1, **kwargs)
    assert a.images.shape == (2, 3, 64, 64) and a.latents.shape == (2, 32, 8, 8)
    assert a.images.amin() >= -1 and a.images.amax() <= 1
    torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=0)
    assert not torch.allclose(a.latents, c.latents, atol=1e-3)
    assert a.gates.shape == (3, 2, 64) and a.grid_hw == (8, 8) and b.gates is None
    assert a.gates.abs().amax() > 0  # the perturbed gate is active
    heun = model.generate(PROMPTS[:1], seed=0, sampler="heun", record_gates=True, **kwargs)
    assert heun.gates.shape == (6, 1, 64)  # two velocity evaluations per Heun step


@pytest.mark.gpu
def test_bf16_cuda_generate_and_answer(model: CheersModel) -> None:
    """bf16 on CUDA: images finite and in range, cached ≈ uncached latents, answers are strings."""
    gpu = copy.deepcopy(model).cuda().to(torch.bfloat16)
    kwargs = dict(num_steps=2, guidance_scale=2.0)
    a = gpu.generate(PROMPTS, seed=0, **kwargs)
    b = gpu.generate(PROMPTS, seed=0, use_cache=False, **kwargs)
    assert a.images.device.type == "cuda" and a.images.dtype == torch.bfloat16
    assert torch.isfinite(a.images).all() and a.images.abs().amax() <= 1
    torch.testing.assert_close(a.latents.float(), b.latents.float(), atol=0.1, rtol=0.05)
    answers = gpu.answer(a.images, ["how many shapes?", "what colour?"], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(x, str) for x in answers)
