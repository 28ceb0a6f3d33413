"""Released names ↔ ours (cheers_pl/official/names.py): diffusers as the VAE oracle, exact inverses, and the released
computation of the projector and the cascaded head, written out here, against our modules with converted weights."""

import math

import torch
import torch.nn.functional as F
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from cheers_pl.model.cheers import CheersModel
from cheers_pl.official.names import TRANSFORMS

VAE, COPY = "model.vae_model.", "model.vae_decoder_projector."


def _float_model(converted: tuple) -> CheersModel:
    cfg, state, _ = converted
    model = CheersModel(cfg).eval()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model


def _ldm_oracle(official_state: dict, prefix: str, levels: int) -> dict:
    """diffusers' single-file converter on the released VAE tensors below `prefix` (FLUX = LDM naming, with
    `quant_conv` / `post_quant_conv` moved out of the encoder / decoder as LDM has them)."""
    ldm = {}
    for name, tensor in official_state.items():
        if name.startswith(prefix) and ".bn." not in name and not name.startswith(prefix + "bn."):
            key = name.removeprefix(prefix).replace("encoder.quant_conv", "quant_conv")
            ldm[key.replace("decoder.post_quant_conv", "post_quant_conv")] = tensor
    return convert_ldm_vae_checkpoint(ldm, {"down_block_types": [0] * levels, "up_block_types": [0] * levels})


def test_vae_names_agree_with_diffusers_ldm_conversion(official_state: dict, converted: tuple) -> None:
    """The FLUX (LDM) VAE naming → diffusers, as diffusers' own single-file converter maps it, for the VAE and for
    the decoder copy D; both BatchNorms are copied as they are."""
    cfg, state, _ = converted
    levels = len(cfg.vision.vae.block_out_channels)
    for ours_prefix, prefix in (("vision.vae.autoencoder.", VAE), ("vision.pixel_decoder.", COPY)):
        oracle = _ldm_oracle(official_state, prefix, levels)
        ours = {k.removeprefix(ours_prefix): v for k, v in state.items() if k.startswith(ours_prefix)}
        for stat in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(ours.pop(f"bn.{stat}"), official_state[f"{prefix}bn.{stat}"])
        assert set(oracle) == set(ours), prefix
        assert all(torch.equal(oracle[k].reshape(ours[k].shape), ours[k]) for k in ours), prefix


def test_transforms_invert_bit_for_bit() -> None:
    for kind, (to_ours, to_official) in TRANSFORMS.items():
        t = torch.randn(16, 8, 1, 1) if kind == "conv1x1" else torch.randn(16, 8)
        assert torch.equal(to_official(to_ours(t, 4), 4), t), kind
    t = torch.arange(8.0)[:, None]  # rows (kh, kw, c) with k = 4, c = 2 → (c, kh, kw)
    assert TRANSFORMS["shuffle_rows"][0](t, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_converted_projector_computes_the_released_unfold_order(official_state: dict, converted: tuple) -> None:
    """LayerNorm (eps 1e-5) → 2×2 unfold with channels (kh, kw, c) → Linear, GELU, Linear."""
    sd = {k: v.float() for k, v in official_state.items() if k.startswith("model.und_projector.")}
    model = _float_model(converted)
    semantic = torch.randn(2, 64, 32)
    p = "model.und_projector."
    x = F.layer_norm(semantic, (32,), sd[p + "layernorm.weight"], sd[p + "layernorm.bias"], eps=1e-5)
    x = x.permute(0, 2, 1).unflatten(-1, (8, 8)).unfold(2, 2, 2).unfold(3, 2, 2)  # B, C, 4, 4, kh, kw
    x = x.reshape(2, 32, 16, 4).permute(0, 2, 3, 1).reshape(2, 16, 128)
    x = F.linear(F.gelu(F.linear(x, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])), sd[p + "mlp.2.weight"])
    expected = x + sd[p + "mlp.2.bias"]
    with torch.no_grad():
        torch.testing.assert_close(model.vision.compress(semantic), expected, atol=1e-5, rtol=1e-5)


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def _rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    angles = pos[:, None].float() / (10000 ** (torch.arange(0, d, 2).float() / d))
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _stage(sd: dict, p: str, x: torch.Tensor, c: torch.Tensor, heads: int, kv: int, pos: torch.Tensor) -> torch.Tensor:
    def lin(name: str, v: torch.Tensor) -> torch.Tensor:
        return F.linear(v, sd[f"{name}.weight"], sd.get(f"{name}.bias"))

    depth = len({k.split(".")[3] for k in sd if k.startswith(f"{p}.diffusion_head_a.")})
    for i in range(depth):
        b = f"{p}.diffusion_head_a.{i}"
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = lin(f"{b}.adaLN_modulation.1", F.silu(c)).chunk(6, -1)
        h = _rms(x, sd[f"{b}.input_layernorm.weight"]) * (1 + sc_a) + sh_a
        B, N, C = h.shape
        q = _rope(lin(f"{b}.attn.q_proj", h).view(B, N, heads, -1).transpose(1, 2), pos)
        k = _rope(lin(f"{b}.attn.k_proj", h).view(B, N, kv, -1).transpose(1, 2), pos)
        v = lin(f"{b}.attn.v_proj", h).view(B, N, kv, -1).transpose(1, 2)
        k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
        x = x + g_a * lin(f"{b}.attn.o_proj", F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))
        h = _rms(x, sd[f"{b}.post_attention_layernorm.weight"]) * (1 + sc_m) + sh_m
        x = x + g_m * lin(f"{b}.mlp.down_proj", F.silu(lin(f"{b}.mlp.gate_proj", h)) * lin(f"{b}.mlp.up_proj", h))
    shift, scale = lin(f"{p}.diffusion_head_b.adaLN_modulation.1", F.silu(c)).chunk(2, -1)
    return lin(
        f"{p}.diffusion_head_b.linear", _rms(x, sd[f"{p}.diffusion_head_b.norm_final.weight"]) * (1 + scale) + shift
    )


def _mlp(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    """Linear (`.0`) → SiLU → Linear (`.2`)."""
    return F.linear(F.silu(F.linear(x, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"])), sd[f"{p}.2.weight"], sd[f"{p}.2.bias"])


def _released_head(sd: dict, h: torch.Tensor, t: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
    """Raw-t sinusoid → two MLPs; stage 1; 2×2 shuffle (kh, kw, c); gate + LayerNorm(eps 1e-5); stage 2 on RoPE
    positions 0..M/2−1 twice; tokens → B×L×H×W."""
    freqs = torch.exp(-math.log(10000) * torch.arange(128).float() / 128)
    emb = torch.cat([torch.cos(t[:, None, None] * freqs), torch.sin(t[:, None, None] * freqs)], -1)  # B, 1, 256
    t1, t2 = (_mlp(sd, f"model.time_embed.mlp_{i}", emb) for i in (1, 2))
    x = _stage(sd, "model.gen_projector", h, t1, heads=2, kv=1, pos=torch.arange(16))
    x = x.view(2, 4, 4, 2, 2, 32).permute(0, 1, 3, 2, 4, 5).reshape(2, 64, 32)
    g = _mlp(sd, "model.hi_gate.gate", x)
    ln_w, ln_b = sd["model.hi_gate.layer_norm.weight"], sd["model.hi_gate.layer_norm.bias"]
    x = F.layer_norm(x + g * detail, (32,), ln_w, ln_b, eps=1e-5)
    v = _stage(sd, "model.hi_projector", x, t2, heads=2, kv=1, pos=torch.arange(32).repeat(2))
    return v.view(2, 8, 8, 32).permute(0, 3, 1, 2)


def test_converted_head_computes_the_released_cascade(official_state: dict, converted: tuple) -> None:
    """Our FlowHead with the official options and converted weights = the released computation (fp32, ≈ 1e-6);
    with any one native option instead it is not."""
    sd = {k: v.float() for k, v in official_state.items() if v.is_floating_point()}
    model = _float_model(converted)
    g = torch.Generator().manual_seed(0)
    h, t, detail = torch.randn(2, 16, 32, generator=g), torch.tensor([0.3, 0.8]), torch.randn(2, 64, 32, generator=g)
    expected = _released_head(sd, h, t, detail)
    with torch.no_grad():
        ours = model.flow_head(h, t, detail, (4, 4))
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        for option in ("time_scale", "stage2_positions"):
            native = model.flow_head
            saved = native.time_embed1.time_scale, native.time_embed2.time_scale, native.stage2.positions
            if option == "time_scale":
                native.time_embed1.time_scale = native.time_embed2.time_scale = 1000.0
            else:
                native.stage2.positions = "raster"
            assert not torch.allclose(native(h, t, detail, (4, 4)), expected, atol=1e-3), option
            native.time_embed1.time_scale, native.time_embed2.time_scale, native.stage2.positions = saved
