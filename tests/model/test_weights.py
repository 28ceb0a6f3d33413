"""Tests for cheers_pl.model.weights: pretrained components through the config path, export → one-call reload."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from cheers_pl.config import compose
from cheers_pl.data.text_tokenizer import CHEERS_SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel
from cheers_pl.model.llm import LLM, LLMConfig
from cheers_pl.model.vae import VAE, VAEConfig
from cheers_pl.model.vision_encoder import VisionEncoderConfig, build_vision_encoder
from cheers_pl.model.weights import CONFIG_FILE, config_from_dict, config_to_dict

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
        f"model.tokenizer.encoder.pretrained={tmp_path / 'siglip'}",
        f"model.tokenizer.vae.pretrained={tmp_path / 'flux2'}", "model.tokenizer.vae.subfolder=vae",
    ])  # fmt: skip
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    model = CheersModel(cfg.model, tokenizer)

    assert all(t in tokenizer.get_vocab() for t in CHEERS_SPECIAL_TOKENS) and len(tokenizer) > base_vocab
    assert model.llm.vocab_size == cfg.model.llm.vocab_size >= len(tokenizer)  # fits: no resize needed
    for (name, got), want in zip(model.llm.state_dict().items(), llm.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, msg=name)
    for got, want in zip(model.tokenizer.encoder.state_dict().values(), encoder.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(model.tokenizer.vae.state_dict().values(), vae.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want)
    decoder = model.tokenizer.pixel_decoder.decoder.state_dict()
    for name, want in vae.autoencoder.decoder.state_dict().items():  # D starts as a copy of the loaded decoder
        torch.testing.assert_close(decoder[name], want)


def perturbed(model: CheersModel) -> CheersModel:
    with torch.no_grad():  # zero-initialised layers (adaLN, flow output, HFI gate) would hide a missing tensor
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.tokenizer.vae.autoencoder.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_export_reloads_with_one_call_and_equal_outputs(tmp_path, tied: bool) -> None:
    model = perturbed(CheersModel(CheersConfig(llm=LLMConfig(tie_word_embeddings=tied)), train_tokenizer(TEXTS, 300)))
    model.save_pretrained(tmp_path / "export")
    saved = json.loads((tmp_path / "export" / CONFIG_FILE).read_text())
    assert saved["llm"]["vocab_size"] == model.llm.vocab_size and saved["llm"]["pretrained"] is None

    reloaded = CheersModel.from_pretrained(tmp_path / "export")
    assert reloaded.llm.is_tied == tied and not reloaded.training
    assert reloaded.text_tokenizer.get_vocab() == model.text_tokenizer.get_vocab()
    b = model.sequence_builder
    seqs = [b.generation("a red circle"), b.understanding("how many shapes?", "two")]
    from cheers_pl.model.generation import left_pad

    ids, pad, blocks, _ = left_pad(seqs, b.ids["pad"])
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    t, z0 = torch.tensor([0.3, 1.0]), torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        a = model(ids, pad, blocks, images, t, z0=z0)
        c = reloaded(ids, pad, blocks, images, t, z0=z0)
    torch.testing.assert_close(c.logits, a.logits, rtol=0, atol=0)
    torch.testing.assert_close(c.velocity, a.velocity, rtol=0, atol=0)
    assert a.velocity.abs().sum() > 0


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
