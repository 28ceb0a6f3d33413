"""Tests for cheers_pl.model.weights: pretrained components through the config path, export → one-call reload."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from cheers_pl.config import compose
from cheers_pl.data.batch import left_pad
from cheers_pl.data.processing import SequenceBuilder
from cheers_pl.data.text_tokenizer import CHEERS_SPECIAL_TOKENS, load_text_tokenizer, train_text_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel
from cheers_pl.model.contrastive_towers import ContrastiveTowersConfig
from cheers_pl.model.llm import LLM, LLMConfig
from cheers_pl.model.vae import VAE, VAEConfig
from cheers_pl.model.vision_encoder import VisionEncoderConfig, build_vision_encoder
from cheers_pl.model.weights import (
    CONFIG_FILE,
    INDEX_FILE,
    WEIGHTS_FILE,
    config_from_dict,
    config_to_dict,
    parameters_on_meta,
)

TEXTS = ["a red circle left of a blue square", "how many shapes are there? two", "what colour is it? green"] * 10


def plain_tokenizer(directory) -> int:
    """A Qwen-like stand-in: a word-level tokenizer WITHOUT the Cheers tokens, saved with save_pretrained."""
    words = sorted({w for t in TEXTS for w in t.replace("?", "").split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(directory))
    return len(words) + 1


def test_pretrained_llm_tokenizer_siglip_and_vae_load_through_the_config(tmp_path) -> None:
    llm = LLM(LLMConfig())
    llm.hf.save_pretrained(str(tmp_path / "qwen"))
    encoder = build_vision_encoder(VisionEncoderConfig())
    encoder.model.save_pretrained(str(tmp_path / "siglip"))
    vae = VAE(VAEConfig())
    with torch.no_grad():  # non-default normaliser statistics must travel with the VAE
        vae.autoencoder.bn.running_mean.normal_()
    vae.autoencoder.save_pretrained(str(tmp_path / "flux2" / "vae"))
    base_vocab = plain_tokenizer(tmp_path / "qwen")
    cfg = compose("tiny_generation", [
        f"model.llm.pretrained={tmp_path / 'qwen'}", f"data.text_tokenizer={tmp_path / 'qwen'}",
        f"model.vision.encoder.pretrained={tmp_path / 'siglip'}",
        f"model.vision.vae.pretrained={tmp_path / 'flux2'}", "model.vision.vae.subfolder=vae",
    ])  # fmt: skip
    tokenizer = load_text_tokenizer(cfg.data.text_tokenizer_path())
    model = CheersModel(cfg.model, vocab_size=len(tokenizer))

    assert all(t in tokenizer.get_vocab() for t in CHEERS_SPECIAL_TOKENS) and len(tokenizer) > base_vocab
    assert model.llm.vocab_size == cfg.model.llm.vocab_size >= len(tokenizer)  # fits: no resize needed
    for (name, got), want in zip(model.llm.state_dict().items(), llm.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, msg=name)
    for got, want in zip(model.vision.encoder.state_dict().values(), encoder.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(model.vision.vae.state_dict().values(), vae.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want)
    decoder = model.vision.pixel_decoder.decoder.state_dict()
    for name, want in vae.autoencoder.decoder.state_dict().items():  # D starts as a copy of the loaded decoder
        torch.testing.assert_close(decoder[name], want)


def perturbed(model: CheersModel) -> CheersModel:
    with torch.no_grad():  # zero-initialised layers (adaLN, flow output, HFI gate) would hide a missing tensor
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.vision.vae.autoencoder.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_export_reloads_with_one_call_and_equal_outputs(tmp_path, tied: bool) -> None:
    tok = train_text_tokenizer(TEXTS, 300)
    cfg = CheersConfig(llm=LLMConfig(tie_word_embeddings=tied), contrastive=ContrastiveTowersConfig())
    model = perturbed(CheersModel(cfg, vocab_size=len(tok)))
    model.save_pretrained(tmp_path / "export")
    saved = json.loads((tmp_path / "export" / CONFIG_FILE).read_text())
    assert saved["llm"]["vocab_size"] == model.llm.vocab_size and saved["llm"]["pretrained"] is None
    assert saved["contrastive"]["vocab_size"] == len(tok) and "vision" in saved

    reloaded = CheersModel.from_pretrained(tmp_path / "export")
    assert reloaded.llm.is_tied == tied and not reloaded.training
    b = SequenceBuilder(tok, model.num_image_tokens)
    batch = left_pad([b.generation("a red circle"), b.understanding("how many shapes?", "two")], b.ids["pad"])
    args = (batch.input_ids, batch.pad_mask, batch.block_ids, torch.randn(2, 32, 8, 8), torch.tensor([0.3, 1.0]))
    with torch.no_grad():
        a, c = model(*args), reloaded(*args)
    torch.testing.assert_close(c.logits, a.logits, rtol=0, atol=0)
    torch.testing.assert_close(c.velocity, a.velocity, rtol=0, atol=0)
    assert a.velocity.abs().sum() > 0


def test_export_of_an_earlier_release_loads_with_renamed_keys(tmp_path) -> None:
    """A directory written when the vision tokenizer was called `tokenizer` (config key and parameter names)."""
    model = perturbed(CheersModel(CheersConfig()))
    model.save_pretrained(tmp_path / "new")
    (tmp_path / "old").mkdir()
    data = json.loads((tmp_path / "new" / CONFIG_FILE).read_text())
    data["tokenizer"] = data.pop("vision")
    (tmp_path / "old" / CONFIG_FILE).write_text(json.dumps(data))
    state = {k.replace("vision.", "tokenizer.", 1): v for k, v in load_file(tmp_path / "new" / WEIGHTS_FILE).items()}
    save_file(state, tmp_path / "old" / WEIGHTS_FILE)
    reloaded = CheersModel.from_pretrained(tmp_path / "old")
    for (name, got), want in zip(reloaded.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    save_file({k: v for k, v in state.items() if "flow_head" not in k}, tmp_path / "old" / WEIGHTS_FILE)
    with pytest.raises(ValueError, match=r"does not fit .* missing \['flow_head"):
        CheersModel.from_pretrained(tmp_path / "old")


def test_config_round_trip_and_unknown_key() -> None:
    cfg = CheersConfig(llm=LLMConfig(num_layers=3))
    assert config_from_dict(CheersConfig, config_to_dict(cfg)) == cfg
    bad = config_to_dict(cfg)
    bad["llm"]["num_layerz"] = 2
    with pytest.raises(ValueError, match=r"unknown keys \['llm.num_layerz'\]"):
        config_from_dict(CheersConfig, bad)


def test_from_pretrained_names_missing_parts(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"not an exported Cheers model: missing \['cheers_config.json'"):
        CheersModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("tied", [True, False])
def test_sharded_bf16_export_reloads_in_bf16_on_meta_built_parameters(tmp_path, tied: bool) -> None:
    """`max_shard_size` writes shards + index; a bf16 export loads in bf16 (parameters built on the meta device and
    assigned: no fp32 copy), the tied head tied again, every tensor equal."""
    cfg = CheersConfig(llm=LLMConfig(tie_word_embeddings=tied))
    model = perturbed(CheersModel(cfg)).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "export", max_shard_size=200_000)
    index = json.loads((tmp_path / "export" / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 3 and not (tmp_path / "export" / WEIGHTS_FILE).exists()
    heads = [k for k in ("llm.hf.lm_head.weight", "llm.hf.model.embed_tokens.weight") if k in index["weight_map"]]
    assert len(heads) == (1 if tied else 2)  # a tied head is stored once
    reloaded = CheersModel.from_pretrained(tmp_path / "export")
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16} and reloaded.llm.is_tied == tied
    for (name, got), want in zip(reloaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    assert not reloaded.vision.vae.autoencoder.encoder.conv_in.weight.requires_grad  # frozen stays frozen


def test_parameters_on_meta_keeps_buffers_real() -> None:
    with parameters_on_meta():
        model = CheersModel(CheersConfig())
    assert all(p.is_meta for p in model.parameters())
    assert not model.flow_head.stage1.rope.inv_freq.is_meta and not model.vision.vae.autoencoder.bn.running_var.is_meta
    assert not torch.nn.Linear(2, 2).weight.is_meta  # patch undone
