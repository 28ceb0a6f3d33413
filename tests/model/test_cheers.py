"""Tests for cheers_pl.model.cheers: config cross-checks, embedding, training forward, answer(), gradients."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cheers_pl.data.processing import IGNORE_INDEX
from cheers_pl.data.text_tokenizer import train_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel, full_cheers_config
from cheers_pl.model.flow_head import FlowHeadConfig
from cheers_pl.model.generation import left_pad
from cheers_pl.model.llm import LLMConfig
from cheers_pl.model.vae import VAEConfig
from cheers_pl.model.vision_tokenizer import VisionTokenizerConfig

TEXTS = ["a red circle left of a blue square", "how many shapes are there? two", "what colour is it? green"] * 10


def perturbed_model(seed: int = 0) -> CheersModel:
    """Tiny random model whose zero-initialised layers (adaLN, flow output, HFI gate) are perturbed, so every path
    carries signal; the LLM weights get extra noise so greedy decoding depends on the context."""
    torch.manual_seed(seed)
    model = CheersModel(CheersConfig(), train_tokenizer(TEXTS, vocab_size=300))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0.0, 0.05)
        for p in model.llm.hf.model.layers.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture(scope="module")
def model() -> CheersModel:
    return perturbed_model().eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def training_batch(model: CheersModel) -> tuple[torch.Tensor, ...]:
    """Row 0 understanding, row 1 generation, row 2 text-only (different lengths → left padding)."""
    b = model.sequence_builder
    seqs = [b.understanding("how many shapes?", "two"), b.generation("a red circle"), b.text("hi", "hello there")]
    ids, pad, blocks, _ = left_pad(seqs, b.ids["pad"])
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, s in enumerate(seqs):
        labels[row, ids.shape[1] - len(s) :] = torch.tensor(s.labels)
    return ids, pad, blocks, labels


def test_config_defaults_consistent_and_structured() -> None:
    cfg = OmegaConf.to_object(OmegaConf.structured(CheersConfig))
    assert isinstance(cfg, CheersConfig) and cfg.llm.dim == cfg.flow_head.llm_dim == cfg.tokenizer.llm_dim == 128


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"llm": LLMConfig(dim=64, mlp_dim=128)}, r"tokenizer.llm_dim=128, llm.dim=64, flow_head.llm_dim=128"),
        ({"flow_head": FlowHeadConfig(sem_dim=32)}, r"flow_head.sem_dim=32 .* tokenizer.encoder.dim=64"),
        ({"flow_head": FlowHeadConfig(latent_dim=16)}, r"flow_head.latent_dim=16 .* VAE latent dim 32"),
        ({"tokenizer": VisionTokenizerConfig(vae=VAEConfig(latent_channels=4))}, r"latent_dim=32 .* dim 16"),
        ({"tokenizer": VisionTokenizerConfig(compression=1)}, r"shuffle_factor=2 must equal tokenizer.compression=1"),
    ],
)
def test_config_cross_checks(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CheersConfig(**kwargs)


def test_full_size_builds_on_meta_with_the_released_parameter_count() -> None:
    with torch.device("meta"):
        model = CheersModel(full_cheers_config(), train_tokenizer(TEXTS, vocab_size=300))
    assert model.llm.vocab_size == 151936 and model.num_image_tokens == 256  # a smaller tokenizer never shrinks it
    total = sum(p.numel() for p in model.parameters())
    assert 2.75e9 < total < 2.85e9  # DESIGN.md §1.4: ≈ 2.8B parameters (5.61 GB in bf16)


def test_vocab_grows_to_tokenizer_with_mean_rows() -> None:
    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = CheersModel(CheersConfig(llm=LLMConfig(vocab_size=280)), tok)
    emb = model.llm.hf.model.embed_tokens.weight
    assert model.llm.vocab_size == len(tok) > 280
    torch.testing.assert_close(emb[280:], emb[:280].mean(0, keepdim=True).expand(len(tok) - 280, -1))


def test_image_positions_and_errors(model: CheersModel) -> None:
    n = model.num_image_tokens
    blocks = torch.zeros(3, n + 4, dtype=torch.long)
    blocks[0, 2 : 2 + n] = 1
    blocks[2, 4:] = 1
    rows, cols = model.image_positions(blocks)
    assert rows.tolist() == [0, 2]
    assert cols.tolist() == [list(range(2, 2 + n)), list(range(4, 4 + n))]
    with pytest.raises(ValueError, match=rf"row 1 has 3 image positions.*num_image_tokens={n}"):
        model.image_positions(torch.tensor([[0] * (n + 4), [0, 1, 1, 1] + [0] * n]))
    two_blocks = blocks[:1].clone()
    two_blocks[0, 2:4] = 2
    with pytest.raises(ValueError, match="row 0 holds more than one image block"):
        model.image_positions(two_blocks)


def test_embed_places_image_tokens_exactly(model: CheersModel) -> None:
    ids, _, blocks, _ = training_batch(model)
    tokens = torch.randn(2, model.num_image_tokens, 128)
    emb = model.embed(ids, blocks, tokens)
    rows, cols = model.image_positions(blocks)
    assert rows.tolist() == [0, 1]
    torch.testing.assert_close(emb[rows[:, None], cols], tokens, rtol=0, atol=0)
    plain = model.llm.embed_tokens(ids)
    text = blocks == 0
    torch.testing.assert_close(emb[text], plain[text], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"image_tokens must have shape \(2, 16, 128\)"):
        model.embed(ids, blocks, tokens[:1])


def test_forward_shapes_and_noise_path(model: CheersModel) -> None:
    ids, pad, blocks, _ = training_batch(model)
    t = torch.tensor([1.0, 0.3, 0.5])
    z0 = torch.randn(3, 32, 8, 8)
    with torch.no_grad():
        out = model(ids, pad, blocks, images(3), t, z0=z0, return_gates=True)
    assert out.logits.shape == (3, ids.shape[1], model.llm.vocab_size)
    assert out.velocity.shape == out.z0.shape == out.z1.shape == out.z_t.shape == (3, 32, 8, 8)
    assert out.has_image.tolist() == [True, True, False] and out.gates.shape == (3, 64)
    torch.testing.assert_close(out.z0[:2], z0[:2])
    torch.testing.assert_close(out.z_t[0], out.z1[0])  # understanding input at t = 1 is clean
    torch.testing.assert_close(out.z_t[1], 0.3 * out.z1[1] + 0.7 * z0[1])
    assert not out.velocity[2].any() and not out.z1[2].any() and out.velocity[:2].abs().amin(dim=(1, 2, 3)).gt(0).all()


def test_gradients_reach_trainable_parts_not_vae() -> None:
    model = perturbed_model().train()
    ids, pad, blocks, labels = training_batch(model)
    out = model(ids, pad, blocks, images(3), torch.tensor([1.0, 0.4, 0.5]))
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    mse = (out.velocity[1] - (out.z1[1] - out.z0[1])).pow(2).mean()
    (ce + mse).backward()
    groups = {
        "llm": model.llm,
        "projector": model.tokenizer.compressor,
        "pixel decoder": model.tokenizer.pixel_decoder,
        "encoder": model.tokenizer.encoder,
        "flow head": model.flow_head,
    }
    for name, module in groups.items():
        missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
        assert not missing, f"{name}: no gradient for {missing}"
    assert all(not p.requires_grad and p.grad is None for p in model.tokenizer.vae.parameters())


@pytest.mark.parametrize("do_sample", [False, True])
def test_answer_cached_equals_uncached(model: CheersModel, do_sample: bool) -> None:
    imgs, questions = images(2), ["how many shapes?", "what colour is the circle in the middle?"]
    kwargs = dict(max_new_tokens=6, do_sample=do_sample, temperature=2.0)
    cached = model.answer(imgs, questions, use_cache=True, generator=torch.Generator().manual_seed(3), **kwargs)
    uncached = model.answer(imgs, questions, use_cache=False, generator=torch.Generator().manual_seed(3), **kwargs)
    assert cached == uncached
    assert all(isinstance(a, str) and a == a.strip() for a in cached)
    assert sum(len(a) for a in cached) > 0  # the perturbed model emits text before <|im_end|>


def test_full_size_config_in_code_matches_the_yaml_preset() -> None:
    """`full_cheers_config()` and conf/model/cheers_1p5b.yaml describe the same shapes (only weight paths differ)."""
    from dataclasses import asdict

    from cheers_pl.config import compose

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    yaml_cfg, code_cfg = flat(asdict(compose("align_1p5b").model)), flat(asdict(full_cheers_config()))
    differ = {k for k in yaml_cfg.keys() | code_cfg.keys() if yaml_cfg.get(k) != code_cfg.get(k)}
    assert differ == {"llm.pretrained", "tokenizer.encoder.pretrained", "tokenizer.vae.pretrained"}
