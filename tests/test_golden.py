"""Golden outputs: a seeded tiny forward (logits, velocity), a seeded 4-step sample and a seeded `answer`.

The model config is pinned here (later changes of the tiny preset do not move it) and its weights, the text
tokenizer and the expected outputs are fixtures (`tests/fixtures/golden/`), recorded once before the layering moves
of the code and checked after every one: a refactor that claims "behaviour unchanged" must leave all of them equal.
Re-record (`python -m tests.test_golden`) only for an intended change of behaviour, and say so in the commit.
The fixtures were recorded with 2 intra-op threads; CPU reductions split by thread count, so the test pins 2.
Ids and answers must be equal; floating outputs equal to float32 rounding (atol 3e-5, rtol 1e-5): the same code on
another x86 CPU (other SIMD kernels) moved logits by 2.3e-6 and 4-step sample latents by 9.5e-6, while a behaviour
change moves them by orders of magnitude more.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

from cheers_pl.data.batch import left_pad
from cheers_pl.data.text_tokenizer import load_text_tokenizer, save_text_tokenizer, train_text_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel
from cheers_pl.model.contrastive_towers import ContrastiveTowersConfig
from cheers_pl.model.flow_head import FlowHeadConfig
from cheers_pl.model.llm import LLMConfig
from cheers_pl.model.vae import VAEConfig
from cheers_pl.model.vision_encoder import VisionEncoderConfig
from cheers_pl.model.vision_tokenizer import VisionTokenizerConfig
from cheers_pl.model.weights import upgrade_parameter_name
from cheers_pl.objective.flow_matching import training_losses
from cheers_pl.pipeline import CheersPipeline

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
CORPUS = ["a red circle left of a blue square", "how many shapes are there? two", "what color is it? green"] * 10
PROMPTS = ["a red circle", "two blue squares left of a green circle"]
QUESTIONS = ["how many shapes are there?", "what color is the circle?"]
SAMPLING = {"seed": 3, "num_steps": 4, "guidance_scale": 3.0, "alpha": 0.5, "sampler": "euler"}


def pinned_config() -> CheersConfig:
    """A 32×32 model with 4 LLM tokens per image (VAE ×4 + 2×2 patchify, encoder patch 8, 2×2 unshuffle)."""
    return CheersConfig(
        vision=VisionTokenizerConfig(
            vae=VAEConfig(block_out_channels=[8, 16, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4),
            encoder=VisionEncoderConfig(image_size=32, patch_size=8, dim=32, num_layers=1, num_heads=2, mlp_dim=64),
            compression=2,
            llm_dim=32,
        ),
        llm=LLMConfig(vocab_size=300, dim=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64),
        flow_head=FlowHeadConfig(
            llm_dim=32,
            sem_dim=32,
            latent_dim=16,
            stage1_depth=1,
            stage1_heads=2,
            stage1_kv_heads=1,
            stage2_depth=1,
            stage2_heads=2,
            stage2_kv_heads=1,
        ),
        contrastive=ContrastiveTowersConfig(dim=16, num_layers=1, num_heads=2, embed_dim=16, max_len=16),
    )


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {
        "images": torch.rand(3, 3, 32, 32, generator=g) * 2 - 1,
        "t": torch.tensor([1.0, 0.3, 0.6]),
        "z0": torch.randn(3, 16, 4, 4, generator=g),
    }


def batch(pipe: CheersPipeline) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row 0 understanding, row 1 generation, row 2 text-only (left-padded)."""
    b = pipe.builder
    seqs = [b.understanding("how many shapes?", "two"), b.generation("a red circle"), b.text("hi", "two")]
    padded = left_pad(seqs, b.ids["pad"])
    return padded.input_ids, padded.pad_mask, padded.block_ids


def golden_pipeline() -> CheersPipeline:
    """The fixture weights (recorded with the vision tokenizer named `tokenizer`: the rename on load is exercised)."""
    text_tokenizer = load_text_tokenizer(str(GOLDEN / "tokenizer"))
    model = CheersModel(pinned_config(), vocab_size=len(text_tokenizer))
    state = {upgrade_parameter_name(k): v for k, v in load_file(GOLDEN / "weights.safetensors").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and missing == ["llm.hf.model.embed_tokens.weight"]  # tied: stored once, as the head
    return CheersPipeline(model.eval(), text_tokenizer)


def outputs(pipe: CheersPipeline) -> tuple[dict[str, torch.Tensor], dict]:
    """The training pass (through the objective that trains), a guided 4-step sample and two answers."""
    model, x = pipe.model, inputs()
    ids, pad, blocks = batch(pipe)
    rows = model.image_positions(blocks)[0]
    with torch.no_grad():
        x1 = model.vision.encode(x["images"][rows])
        flow = training_losses(lambda z_t, t: model(ids, pad, blocks, z_t, t), x1, x["t"][rows], x0=x["z0"][rows])
        velocity = torch.zeros(3, *flow.output.velocity.shape[1:]).index_copy(0, rows, flow.output.velocity)
        sample = pipe.generate(PROMPTS, **SAMPLING)
        answers = pipe.answer(x["images"][:2], QUESTIONS, max_new_tokens=6)
    tensors = {
        "input_ids": ids,
        "logits": flow.output.logits,
        "velocity": velocity,  # zeros on the text-only row
        "sample_latents": sample.latents,
        "sample_images": sample.images,
    }
    return tensors, {"answers": answers}


THREADS = 2


@pytest.fixture
def pinned_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def test_golden_outputs_unchanged(pinned_threads) -> None:
    tensors, texts = outputs(golden_pipeline())
    expected = load_file(GOLDEN / "outputs.safetensors")
    assert set(tensors) == set(expected)
    for key, value in tensors.items():
        exact = not value.is_floating_point()
        torch.testing.assert_close(value, expected[key], rtol=0 if exact else 1e-5, atol=0 if exact else 3e-5,
                                   msg=lambda m, k=key: f"{k}: {m}")  # fmt: skip
    assert texts == json.loads((GOLDEN / "outputs.json").read_text())


def record() -> None:
    """Writes the fixtures: seeded weights (zero-initialised layers perturbed so every path carries signal)."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    text_tokenizer = train_text_tokenizer(CORPUS, vocab_size=300)
    model = CheersModel(pinned_config(), vocab_size=len(text_tokenizer))
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
        for p in model.llm.hf.model.layers.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    # a trained normaliser, not the identity statistics of a fresh BatchNorm
    model.vision.vae.refresh_statistics(inputs()["images"])
    save_text_tokenizer(text_tokenizer, GOLDEN / "tokenizer")
    save_model(model, str(GOLDEN / "weights.safetensors"))
    tensors, texts = outputs(golden_pipeline())
    save_file({k: v.contiguous() for k, v in tensors.items()}, GOLDEN / "outputs.safetensors")
    (GOLDEN / "outputs.json").write_text(json.dumps(texts, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(THREADS)
    record()
