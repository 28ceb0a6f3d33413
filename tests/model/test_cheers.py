"""Tests for cheers_pl.model.cheers: config cross-checks, embedding, training forward, answer(), gradients."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cheers_pl.data.batch import left_pad
from cheers_pl.data.text_tokenizer import train_text_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel, full_cheers_config
from cheers_pl.model.flow_head import FlowHeadConfig
from cheers_pl.model.llm import LLMConfig
from cheers_pl.model.vae import VAEConfig
from cheers_pl.model.vision_tokenizer import VisionTokenizerConfig
from cheers_pl.objective.flow_matching import interpolate, training_losses
from cheers_pl.objective.lm import IGNORE_INDEX
from cheers_pl.pipeline import CheersPipeline
from tests._models import TEXTS, perturbed_pipeline


@pytest.fixture(scope="module")
def pipe() -> CheersPipeline:
    pipe = perturbed_pipeline(llm_noise=0.2)
    pipe.model.eval()
    return pipe


@pytest.fixture(scope="module")
def model(pipe: CheersPipeline) -> CheersModel:
    return pipe.model


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def training_batch(pipe: CheersPipeline) -> tuple[torch.Tensor, ...]:
    """Row 0 understanding, row 1 generation, row 2 text-only (different lengths → left padding)."""
    b = pipe.builder
    seqs = [b.understanding("how many shapes?", "two"), b.generation("a red circle"), b.text("hi", "hello there")]
    padded = left_pad(seqs, b.ids["pad"])
    return padded.input_ids, padded.pad_mask, padded.block_ids, padded.labels


def test_config_defaults_consistent_and_structured() -> None:
    cfg = OmegaConf.to_object(OmegaConf.structured(CheersConfig))
    assert isinstance(cfg, CheersConfig) and cfg.llm.dim == cfg.flow_head.llm_dim == cfg.vision.llm_dim == 128


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"llm": LLMConfig(dim=64, mlp_dim=128)}, r"vision.llm_dim=128, llm.dim=64, flow_head.llm_dim=128"),
        ({"flow_head": FlowHeadConfig(sem_dim=32)}, r"flow_head.sem_dim=32 .* vision.encoder.dim=128"),
        ({"flow_head": FlowHeadConfig(latent_dim=16)}, r"flow_head.latent_dim=16 .* VAE latent dim 32"),
        ({"vision": VisionTokenizerConfig(vae=VAEConfig(latent_channels=4))}, r"latent_dim=32 .* dim 16"),
        ({"vision": VisionTokenizerConfig(compression=1)}, r"shuffle_factor=2 must equal vision.compression=1"),
    ],
)
def test_config_cross_checks(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CheersConfig(**kwargs)


def test_full_size_builds_on_meta_with_the_released_parameter_count() -> None:
    with torch.device("meta"):
        model = CheersModel(full_cheers_config(), vocab_size=len(train_text_tokenizer(TEXTS, vocab_size=300)))
    assert model.llm.vocab_size == 151936 and model.num_image_tokens == 256  # a smaller tokenizer never shrinks it
    total = sum(p.numel() for p in model.parameters())
    assert 2.75e9 < total < 2.85e9  # DESIGN.md §1.4: ≈ 2.8B parameters (5.61 GB in bf16)


def test_vocab_grows_to_tokenizer_with_mean_rows() -> None:
    tok = train_text_tokenizer(TEXTS, vocab_size=300)
    model = CheersModel(CheersConfig(llm=LLMConfig(vocab_size=280)), vocab_size=len(tok))
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


def test_embed_places_image_tokens_exactly(pipe: CheersPipeline, model: CheersModel) -> None:
    ids, _, blocks, _ = training_batch(pipe)
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


def test_forward_shapes_and_velocity_only_on_image_rows(pipe: CheersPipeline, model: CheersModel) -> None:
    ids, pad, blocks, _ = training_batch(pipe)
    z_t = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        out = model(ids, pad, blocks, z_t, torch.tensor([1.0, 0.3]), return_gates=True)
    assert out.logits.shape == (3, ids.shape[1], model.llm.vocab_size)
    assert out.velocity.shape == (2, 32, 8, 8) and out.rows.tolist() == [0, 1] and out.gates.shape == (2, 64)
    assert out.velocity.abs().amin(dim=(1, 2, 3)).gt(0).all()
    with pytest.raises(ValueError, match=r"z_t must have shape \(2, 32, 8, 8\)"):
        model(ids, pad, blocks, z_t[:1], torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        model(ids, pad, blocks, z_t, torch.tensor([1.0]))
    text_only = model(ids[2:], pad[2:], blocks[2:], None, None)  # no image block: no latent needed
    assert text_only.velocity.shape == (0, 32, 8, 8) and text_only.rows.numel() == 0


def test_training_pass_through_the_objective_uses_the_flow_path(pipe: CheersPipeline, model: CheersModel) -> None:
    """`training_losses` feeds the model exactly x_t = t·x1 + (1−t)·x0 (understanding rows clean at t = 1)."""
    ids, pad, blocks, _ = training_batch(pipe)
    x1 = model.vision.encode(images(2))
    x0, t = torch.randn(2, 32, 8, 8), torch.tensor([1.0, 0.3])
    seen = []

    def network(z_t: torch.Tensor, t_R: torch.Tensor):
        seen.append(z_t)
        return model(ids, pad, blocks, z_t, t_R)

    with torch.no_grad():
        flow = training_losses(network, x1, t, x0=x0)
    torch.testing.assert_close(seen[0][0], x1[0])
    torch.testing.assert_close(seen[0], interpolate(x0, x1, t))
    expected = (flow.output.velocity - (x1 - x0)).pow(2).flatten(1).mean(1).mean()
    torch.testing.assert_close(flow.loss, expected)


def test_gradients_reach_trainable_parts_not_vae() -> None:
    pipe = perturbed_pipeline(llm_noise=0.2)
    model = pipe.model.train()
    ids, pad, blocks, labels = training_batch(pipe)
    x1 = model.vision.encode(images(2))
    flow = training_losses(lambda z, t: model(ids, pad, blocks, z, t), x1, torch.tensor([1.0, 0.4]))
    logits = flow.output.logits
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    (ce + flow.loss).backward()
    groups = {
        "llm": model.llm,
        "projector": model.vision.compressor,
        "pixel decoder": model.vision.pixel_decoder,
        "encoder": model.vision.encoder,
        "flow head": model.flow_head,
    }
    for name, module in groups.items():
        missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
        assert not missing, f"{name}: no gradient for {missing}"
    assert all(not p.requires_grad and p.grad is None for p in model.vision.vae.parameters())


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
    assert differ == {"llm.pretrained", "vision.encoder.pretrained", "vision.vae.pretrained"}


def test_packed_questions_get_the_logits_of_single_question_rows(pipe: CheersPipeline, model: CheersModel) -> None:
    """Under the segment mask every packed answer sees the image and its own question only, at the same positions."""
    b = pipe.builder
    qa = [("how many shapes?", "two"), ("what color is the circle?", "red"), ("describe", "a red circle")]
    singles = left_pad([b.understanding(q, a) for q, a in qa] + [b.understanding_packed(qa)], b.ids["pad"])
    assert singles.segment_ids is not None and singles.segment_ids[:3].eq(0).all()
    z1 = model.vision.encode(images(1)).expand(4, -1, -1, -1)
    with torch.no_grad():
        out = model(
            singles.input_ids, singles.pad_mask, singles.block_ids, z1, torch.ones(4), segment_ids=singles.segment_ids
        )
    packed_row, prefix_len = 3, int((singles.segment_ids[3] == 0).sum() - (~singles.pad_mask[3]).sum())
    for k in range(3):
        cols = (singles.segment_ids[packed_row] == k + 1).nonzero().squeeze(1)
        single_cols = torch.arange(singles.input_ids.shape[1] - len(cols), singles.input_ids.shape[1])
        torch.testing.assert_close(out.logits[packed_row, cols], out.logits[k, single_cols], atol=1e-5, rtol=1e-4)
    assert prefix_len > model.num_image_tokens
    # without the segment mask the later answers would see the earlier questions: the logits differ
    with torch.no_grad():
        plain = model(singles.input_ids[3:], singles.pad_mask[3:], singles.block_ids[3:], z1[:1], torch.ones(1))
    cols = (singles.segment_ids[packed_row] == 3).nonzero().squeeze(1)
    assert not torch.allclose(plain.logits[0, cols], out.logits[packed_row, cols], atol=1e-3)


def test_data_prediction_turns_the_head_output_into_the_velocity_of_its_latent(pipe: CheersPipeline) -> None:
    """flow_head.prediction="data": velocity = (x̂1 − z_t)/(1 − t) of the head output, in training and sampling."""
    import copy
    from dataclasses import replace

    model = copy.deepcopy(pipe.model)
    ids, pad, blocks, _ = training_batch(pipe)
    z_t, t = torch.randn(2, 32, 8, 8), torch.tensor([1.0, 0.3])
    with torch.no_grad():
        raw = model(ids, pad, blocks, z_t, t).velocity
        model.cfg = replace(model.cfg, flow_head=replace(model.cfg.flow_head, prediction="data"))
        v = model(ids, pad, blocks, z_t, t).velocity
    torch.testing.assert_close(v[1], (raw[1] - z_t[1]) / 0.7)
    torch.testing.assert_close(v[0], (raw[0] - z_t[0]) / 0.05)  # 1 − t clamped at t = 1
    tokens, detail = model.vision(z_t)
    with pytest.raises(ValueError, match="needs z_t"):
        model.forward_tokens(ids, pad, blocks, tokens, t, detail)
