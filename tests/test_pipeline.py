"""Tests for cheers_pl.pipeline: text → ids for answer / generate, the unconditional prompt, export round trip."""

import copy
import dataclasses
import json

import pytest
import torch
from PIL import Image

from cheers_pl.data.batch import left_pad
from cheers_pl.data.processing import ProcessingConfig, SequenceBuilder
from cheers_pl.data.text_tokenizer import NO_MEAN
from cheers_pl.objective.sampling import SamplingConfig
from cheers_pl.pipeline import CheersPipeline, blank_all_text, blank_prompt
from tests._models import perturbed_pipeline

PROMPTS = ["a red circle", "two blue squares left of a green circle"]


@pytest.fixture(scope="module")
def pipe() -> CheersPipeline:
    pipe = perturbed_pipeline(llm_noise=0.2)
    pipe.model.eval()
    return pipe


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_unconditional_prompt_blanks_exactly_the_prompt_text(pipe: CheersPipeline) -> None:
    batch = pipe.prompt_batch(PROMPTS, guided=True)
    ids, pm = batch.input_ids, batch.prompt_mask
    cond, uncond = ids[:2], ids[2:]
    assert uncond.shape == cond.shape
    no_mean = pipe.builder.ids[NO_MEAN]
    assert (uncond[pm[2:]] == no_mean).all() and (uncond[~pm[2:]] == cond[~pm[:2]]).all()
    assert (cond != no_mean).all()
    for row, prompt in enumerate(PROMPTS):
        text_ids = pipe.text_tokenizer(prompt, add_special_tokens=False).input_ids
        assert cond[row][pm[row]].tolist() == text_ids
    assert pipe.velocity_fn(PROMPTS, 4.0).input_ids.shape[0] == 2 * len(PROMPTS)
    assert pipe.velocity_fn(PROMPTS, 1.0).input_ids.shape[0] == len(PROMPTS)


@pytest.mark.parametrize("do_sample", [False, True])
def test_answer_cached_equals_uncached(pipe: CheersPipeline, do_sample: bool) -> None:
    imgs, questions = images(2), ["how many shapes?", "what colour is the circle in the middle?"]
    kwargs = dict(max_new_tokens=6, do_sample=do_sample, temperature=2.0)
    cached = pipe.answer(imgs, questions, use_cache=True, generator=torch.Generator().manual_seed(3), **kwargs)
    uncached = pipe.answer(imgs, questions, use_cache=False, generator=torch.Generator().manual_seed(3), **kwargs)
    assert cached == uncached
    assert all(isinstance(a, str) and a == a.strip() for a in cached)
    assert sum(len(a) for a in cached) > 0  # the perturbed model emits text before <|im_end|>
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        pipe.answer(imgs, questions[:1])


def test_generate_seeded_shapes_range_and_gates(pipe: CheersPipeline) -> None:
    kwargs = dict(num_steps=3, guidance_scale=2.0, alpha=0.5)
    a = pipe.generate(PROMPTS, seed=0, record_gates=True, **kwargs)
    b = pipe.generate(PROMPTS, seed=0, use_cache=False, **kwargs)
    c = pipe.generate(PROMPTS, seed=1, **kwargs)
    assert a.images.shape == (2, 3, 64, 64) and a.latents.shape == (2, 32, 8, 8)
    assert a.images.amin() >= -1 and a.images.amax() <= 1
    torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=0)
    assert not torch.allclose(a.latents, c.latents, atol=1e-3)
    assert a.gates.shape == (3, 2, 64) and a.grid_hw == (8, 8) and b.gates is None
    assert a.gates.abs().amax() > 0  # the perturbed gate is active
    heun = pipe.generate(PROMPTS[:1], seed=0, sampler="heun", record_gates=True, **kwargs)
    assert heun.gates.shape == (6, 1, 64)  # two velocity evaluations per Heun step


def test_sampling_defaults_come_from_the_pipeline(pipe: CheersPipeline) -> None:
    fast = CheersPipeline(pipe.model, pipe.text_tokenizer, dataclasses.replace(pipe.sampling, num_steps=2))
    gates = fast.generate(PROMPTS[:1], record_gates=True).gates
    assert gates.shape[0] == 2 and pipe.sampling.num_steps == 80  # the paper's default, SamplingConfig


def test_save_and_from_pretrained_round_trip(pipe: CheersPipeline, tmp_path) -> None:
    pipe.save_pretrained(tmp_path / "export")
    again = CheersPipeline.from_pretrained(tmp_path / "export")
    assert again.text_tokenizer.get_vocab() == pipe.text_tokenizer.get_vocab()
    kwargs = dict(num_steps=2, guidance_scale=2.0, seed=4)
    torch.testing.assert_close(again.generate(PROMPTS, **kwargs).latents, pipe.generate(PROMPTS, **kwargs).latents)
    (tmp_path / "export" / "tokenizer" / "tokenizer.json").unlink()
    (tmp_path / "export" / "tokenizer").rename(tmp_path / "gone")
    with pytest.raises(ValueError, match="missing \\['tokenizer'\\]"):
        CheersPipeline.from_pretrained(tmp_path / "export")


@pytest.mark.gpu
def test_bf16_cuda_generate_and_answer(pipe: CheersPipeline) -> None:
    """bf16 on CUDA: images finite and in range, cached ≈ uncached latents, answers are strings."""
    gpu = CheersPipeline(copy.deepcopy(pipe.model).cuda().to(torch.bfloat16), pipe.text_tokenizer)
    kwargs = dict(num_steps=2, guidance_scale=2.0)
    a = gpu.generate(PROMPTS, seed=0, **kwargs)
    b = gpu.generate(PROMPTS, seed=0, use_cache=False, **kwargs)
    assert a.images.device.type == "cuda" and a.images.dtype == torch.bfloat16
    assert torch.isfinite(a.images).all() and a.images.abs().amax() <= 1
    torch.testing.assert_close(a.latents.float(), b.latents.float(), atol=0.1, rtol=0.05)
    answers = gpu.answer(a.images, ["how many shapes?", "what colour?"], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(x, str) for x in answers)


def test_all_text_unconditional_prompt_is_the_released_one(qwen_tokenizer) -> None:
    """sampling.unconditional="all_text": every token but `<im_start>`, `<im_end>` and the image positions becomes
    `<no_mean>` (the released `_build_uncond_full_ids`); padding stays padding."""
    builder = SequenceBuilder(qwen_tokenizer, 4, ProcessingConfig.official())
    batch = left_pad([builder.generation_prompt("a red fox"), builder.edit_prompt("make the fox blue")], 151643)
    twins = blank_all_text(batch, [151667, 151668], 151669)
    for row in range(2):
        real = batch.input_ids[row][batch.pad_mask[row]].tolist()
        image = batch.block_ids[row][batch.pad_mask[row]].tolist()
        want = [t if t in (151667, 151668) or b else 151669 for t, b in zip(real, image, strict=True)]
        assert twins[row][batch.pad_mask[row]].tolist() == want
        assert (twins[row][~batch.pad_mask[row]] == 151643).all()
    assert twins[0][batch.pad_mask[0]].tolist()[-1] == 151667 and (twins[0][-2] == 151669)
    native = blank_prompt(batch.input_ids, batch.prompt_mask, 151669)
    assert (native != twins).any()


@pytest.fixture(scope="module")
def sources() -> torch.Tensor:
    return images(2, seed=7)


def test_edit_shapes_determinism_and_cached_equals_uncached(pipe: CheersPipeline, sources: torch.Tensor) -> None:
    kwargs = dict(num_steps=5, guidance_scale=2.0, alpha=0.5, t0=0.4)
    instructions = ["make it red", "add a blue square"]
    a = pipe.edit(sources, instructions, seed=0, record_gates=True, **kwargs)
    b = pipe.edit(sources, instructions, seed=0, use_cache=False, **kwargs)
    c = pipe.edit(sources, instructions, seed=1, **kwargs)
    assert a.images.shape == (2, 3, 64, 64) and a.latents.shape == (2, 32, 8, 8)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=0)
    assert not torch.allclose(a.latents, c.latents, atol=1e-3)
    assert a.gates.shape[0] == int(5 * (1 - 0.4)) == 3  # int(N·(1 − t0)) velocity evaluations
    official = pipe.edit(sources, instructions, time_grid="official", record_gates=True, **kwargs)
    assert official.gates.shape[0] == 3 and not torch.allclose(official.latents, a.latents, atol=1e-3)
    with pytest.raises(ValueError, match="t0"):
        pipe.edit(sources, instructions, t0=1.0)


def test_edit_returns_the_source_latent_as_t0_approaches_one(pipe: CheersPipeline, sources: torch.Tensor) -> None:
    z1 = pipe.model.vision.encode(sources)
    errors = []
    for t0 in (0.8, 0.95, 0.99):  # 19, 5 and 1 steps of 100
        out = pipe.edit(sources, ["keep it"] * 2, t0=t0, num_steps=100, guidance_scale=2.0, alpha=1.0)
        errors.append(((out.latents - z1).norm() / z1.norm()).item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1


def test_settings_travel_with_the_export(pipe: CheersPipeline, tmp_path) -> None:
    official = CheersPipeline(
        pipe.model, pipe.text_tokenizer, SamplingConfig(time_grid="official", unconditional="all_text"),
        ProcessingConfig.official(),
    )  # fmt: skip
    official.save_pretrained(tmp_path / "export")
    again = CheersPipeline.from_pretrained(tmp_path / "export")
    assert again.sampling == official.sampling and again.processing == official.processing
    assert again.preprocess(Image.new("RGB", (64, 32), (255, 255, 255)))[:, 0].eq(-1).all()  # black padding
    (tmp_path / "export" / "pipeline.json").write_text(json.dumps({"sampling": {"stepz": 3}}))
    with pytest.raises(ValueError, match=r"unknown keys \['sampling.stepz'\]"):
        CheersPipeline.from_pretrained(tmp_path / "export")
    (tmp_path / "export" / "pipeline.json").unlink()  # an export written before pipeline.json: defaults
    assert CheersPipeline.from_pretrained(tmp_path / "export").sampling == SamplingConfig()
