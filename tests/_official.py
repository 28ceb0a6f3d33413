"""A tiny random checkpoint in the released Cheers layout, for the converter's tests.

Names follow the release's pattern (its index, copied to `tests/fixtures/official/checkpoint`, at tiny depth) and
shapes the released modules' formulas (UMMModel: SigLIP2 tower with pooling head, FLUX-named VAE and decoder copy
with their BatchNorms, und_projector, gen_projector / hi_projector DiT stages, hi_gate, time_embed, Qwen2 decoder,
lm_head), written out here independently of `cheers_pl.official.names`, so the tests check the mapping against the
layout rather than against itself.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from cheers_pl.data.text_tokenizer import train_text_tokenizer
from tests._models import TEXTS

TINY_CONFIG = {
    "architectures": ["Cheers"],
    "vae_encoder_config": {"resolution": 32, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8},
    "vae_decoder_config": {"resolution": 32, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8},
    "vision_representation_config": {
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 32,
        "image_size": 32,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-6,
        "num_attention_heads": 2,
        "num_channels": 3,
        "num_hidden_layers": 2,
        "patch_size": 4,
    },
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "num_hidden_layers": 2,
        "tie_word_embeddings": True,
        "vocab_size": 320,
        "max_position_embeddings": 512,
    },
    "model_type": "umm",
    "torch_dtype": "bfloat16",
}
STAGE1_DEPTH, STAGE2_DEPTH = 2, 1


def _linear(out: dict, name: str, n_out: int, n_in: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = (n_out, n_in)
    if bias:
        out[f"{name}.bias"] = (n_out,)


def _norm(out: dict, name: str, dim: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = (dim,)
    if bias:
        out[f"{name}.bias"] = (dim,)


def _conv(out: dict, name: str, n_out: int, n_in: int, k: int) -> None:
    out[f"{name}.weight"], out[f"{name}.bias"] = (n_out, n_in, k, k), (n_out,)


def _resnet(out: dict, name: str, n_in: int, n_out: int) -> None:
    _norm(out, f"{name}.norm1", n_in)
    _conv(out, f"{name}.conv1", n_out, n_in, 3)
    _norm(out, f"{name}.norm2", n_out)
    _conv(out, f"{name}.conv2", n_out, n_out, 3)
    if n_in != n_out:
        _conv(out, f"{name}.nin_shortcut", n_out, n_in, 1)


def _mid(out: dict, name: str, c: int) -> None:
    _resnet(out, f"{name}.block_1", c, c)
    _norm(out, f"{name}.attn_1.norm", c)
    for layer in ("q", "k", "v", "proj_out"):
        _conv(out, f"{name}.attn_1.{layer}", c, c, 1)
    _resnet(out, f"{name}.block_2", c, c)


def _decoder(out: dict, name: str, vae: dict) -> None:
    ch, mult, blocks, z = vae["ch"], vae["ch_mult"], vae["num_res_blocks"], vae["z_channels"]
    _conv(out, f"{name}.post_quant_conv", z, z, 1)
    block_in = ch * mult[-1]
    _conv(out, f"{name}.conv_in", block_in, z, 3)
    _mid(out, f"{name}.mid", block_in)
    for level in reversed(range(len(mult))):
        for j in range(blocks + 1):
            _resnet(out, f"{name}.up.{level}.block.{j}", block_in, ch * mult[level])
            block_in = ch * mult[level]
        if level != 0:
            _conv(out, f"{name}.up.{level}.upsample.conv", block_in, block_in, 3)
    _norm(out, f"{name}.norm_out", block_in)
    _conv(out, f"{name}.conv_out", 3, block_in, 3)


def _encoder(out: dict, name: str, vae: dict) -> None:
    ch, mult, blocks, z = vae["ch"], vae["ch_mult"], vae["num_res_blocks"], vae["z_channels"]
    _conv(out, f"{name}.quant_conv", 2 * z, 2 * z, 1)
    _conv(out, f"{name}.conv_in", ch, 3, 3)
    in_mult = (1, *mult)
    for level in range(len(mult)):
        block_in = ch * in_mult[level]
        for j in range(blocks):
            _resnet(out, f"{name}.down.{level}.block.{j}", block_in, ch * mult[level])
            block_in = ch * mult[level]
        if level != len(mult) - 1:
            _conv(out, f"{name}.down.{level}.downsample.conv", block_in, block_in, 3)
    _mid(out, f"{name}.mid", block_in)
    _norm(out, f"{name}.norm_out", block_in)
    _conv(out, f"{name}.conv_out", 2 * z, block_in, 3)


def _bn(out: dict, name: str, dim: int) -> None:
    out[f"{name}.running_mean"], out[f"{name}.running_var"], out[f"{name}.num_batches_tracked"] = (dim,), (dim,), ()


def _dit(out: dict, name: str, dim: int, heads: int, kv: int, depth: int, out_dim: int) -> None:
    hd = dim // heads
    for i in range(depth):
        block = f"{name}.diffusion_head_a.{i}"
        _linear(out, f"{block}.attn.q_proj", heads * hd, dim, bias=False)
        _linear(out, f"{block}.attn.k_proj", kv * hd, dim, bias=False)
        _linear(out, f"{block}.attn.v_proj", kv * hd, dim, bias=False)
        _linear(out, f"{block}.attn.o_proj", dim, heads * hd, bias=False)
        _linear(out, f"{block}.mlp.gate_proj", 4 * dim, dim, bias=False)
        _linear(out, f"{block}.mlp.up_proj", 4 * dim, dim, bias=False)
        _linear(out, f"{block}.mlp.down_proj", dim, 4 * dim, bias=False)
        _norm(out, f"{block}.input_layernorm", dim, bias=False)
        _norm(out, f"{block}.post_attention_layernorm", dim, bias=False)
        _linear(out, f"{block}.adaLN_modulation.1", 6 * dim, dim)
    _norm(out, f"{name}.diffusion_head_b.norm_final", dim, bias=False)
    _linear(out, f"{name}.diffusion_head_b.linear", out_dim, dim)
    _linear(out, f"{name}.diffusion_head_b.adaLN_modulation.1", 2 * dim, dim)


def official_shapes(config: dict = TINY_CONFIG) -> dict[str, tuple[int, ...]]:
    """Every tensor of a released-layout checkpoint of `config` with its shape."""
    text, sig, vae = config["text_config"], config["vision_representation_config"], config["vae_encoder_config"]
    d, c, v, i_t, i_s = text["hidden_size"], sig["hidden_size"], text["vocab_size"], text["intermediate_size"], sig[
        "intermediate_size"]  # fmt: skip
    heads, kv, hd = text["num_attention_heads"], text["num_key_value_heads"], d // text["num_attention_heads"]
    out: dict = {"lm_head.weight": (v, d), "model.language_model.embed_tokens.weight": (v, d)}
    for i in range(text["num_hidden_layers"]):
        layer = f"model.language_model.layers.{i}"
        _linear(out, f"{layer}.self_attn.q_proj", heads * hd, d)
        _linear(out, f"{layer}.self_attn.k_proj", kv * hd, d)
        _linear(out, f"{layer}.self_attn.v_proj", kv * hd, d)
        _linear(out, f"{layer}.self_attn.o_proj", d, heads * hd, bias=False)
        _linear(out, f"{layer}.mlp.gate_proj", i_t, d, bias=False)
        _linear(out, f"{layer}.mlp.up_proj", i_t, d, bias=False)
        _linear(out, f"{layer}.mlp.down_proj", d, i_t, bias=False)
        _norm(out, f"{layer}.input_layernorm", d, bias=False)
        _norm(out, f"{layer}.post_attention_layernorm", d, bias=False)
    _norm(out, "model.language_model.norm", d, bias=False)
    p, grid = sig["patch_size"], (sig["image_size"] // sig["patch_size"]) ** 2
    _conv(out, "model.vision_representation.embeddings.patch_embedding", c, 3, p)
    out["model.vision_representation.embeddings.position_embedding.weight"] = (grid, c)
    for i in range(sig["num_hidden_layers"]):
        layer = f"model.vision_representation.encoder.layers.{i}"
        _norm(out, f"{layer}.layer_norm1", c)
        _norm(out, f"{layer}.layer_norm2", c)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(out, f"{layer}.self_attn.{proj}", c, c)
        _linear(out, f"{layer}.mlp.fc1", i_s, c)
        _linear(out, f"{layer}.mlp.fc2", c, i_s)
    _norm(out, "model.vision_representation.post_layernorm", c)
    head = "model.vision_representation.head"
    out[f"{head}.probe"] = (1, 1, c)
    out[f"{head}.attention.in_proj_weight"], out[f"{head}.attention.in_proj_bias"] = (3 * c, c), (3 * c,)
    _linear(out, f"{head}.attention.out_proj", c, c)
    _norm(out, f"{head}.layernorm", c)
    _linear(out, f"{head}.mlp.fc1", i_s, c)
    _linear(out, f"{head}.mlp.fc2", c, i_s)
    _encoder(out, "model.vae_model.encoder", vae)
    _decoder(out, "model.vae_model.decoder", vae)
    _bn(out, "model.vae_model.bn", 4 * vae["z_channels"])
    _decoder(out, "model.vae_decoder_projector.decoder", vae)
    _bn(out, "model.vae_decoder_projector.bn", 4 * vae["z_channels"])
    _norm(out, "model.und_projector.layernorm", c)
    _linear(out, "model.und_projector.mlp.0", 4 * c, 4 * c)
    _linear(out, "model.und_projector.mlp.2", d, 4 * c)
    _dit(out, "model.gen_projector", d, heads, kv, STAGE1_DEPTH, 4 * c)
    _dit(out, "model.hi_projector", c, sig["num_attention_heads"], kv, STAGE2_DEPTH, config["vae_decoder_config"]["ch"])
    _linear(out, "model.hi_gate.gate.0", c, c)
    _linear(out, "model.hi_gate.gate.2", 1, c)
    _norm(out, "model.hi_gate.layer_norm", c)
    for k, dim in (("1", d), ("2", c)):
        _linear(out, f"model.time_embed.mlp_{k}.0", dim, 256)
        _linear(out, f"model.time_embed.mlp_{k}.2", dim, dim)
    return out


def random_official_state(config: dict = TINY_CONFIG, tied: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random bf16 tensors of every name (BatchNorm counters int64, variances positive; `tied`: lm_head = embed)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_shapes(config).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7, dtype=torch.int64)
        else:
            t = torch.randn(shape, generator=g) * 0.2
            state[name] = (t.abs() + 0.5 if name.endswith("running_var") else t).to(torch.bfloat16)
    if tied:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].clone()
    return state


def write_official_checkpoint(directory: Path, state: dict[str, torch.Tensor], config: dict = TINY_CONFIG) -> Path:
    """Writes `config.json`, two safetensors shards with their index (as the release) and a small tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(directory / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, shard))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    train_text_tokenizer(TEXTS, vocab_size=300).save_pretrained(str(directory))
    return directory
