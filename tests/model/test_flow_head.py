import dataclasses

import pytest
import torch

from cheers_pl.model.cheers import full_cheers_config
from cheers_pl.model.flow_head import FlowHead, FlowHeadConfig, rope_positions
from cheers_pl.model.projectors import shuffle_tokens


def _perturb_zero_inits(module: torch.nn.Module, skip: str = "\0") -> None:
    """Gives every all-zero parameter (adaLN-Zero, zero-init outputs) small random values, except names with `skip`."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if skip not in name and torch.count_nonzero(p) == 0:
                p.normal_(0.0, 0.1)


def _inputs(cfg: FlowHeadConfig, grid_hw: tuple[int, int] = (4, 4), batch: int = 2):
    h, w = grid_hw
    f = cfg.shuffle_factor
    return (
        torch.randn(batch, h * w, cfg.llm_dim),
        torch.rand(batch),
        torch.randn(batch, h * w * f * f, cfg.sem_dim),
    )


@pytest.mark.parametrize("grid_hw", [(4, 4), (2, 3)])
def test_tiny_output_shapes(grid_hw: tuple[int, int]):
    cfg = FlowHeadConfig()
    head = FlowHead(cfg)
    h_BNC, t_B, detail = _inputs(cfg, grid_hw)
    v, gate = head(h_BNC, t_B, detail, grid_hw, return_gate=True)
    H, W = 2 * grid_hw[0], 2 * grid_hw[1]
    assert v.shape == (2, cfg.latent_dim, H, W)
    assert gate.shape == (2, H * W)
    assert torch.equal(gate, torch.zeros_like(gate))  # zero-initialised gate
    assert head(h_BNC, torch.tensor(0.3), detail, grid_hw).shape == v.shape  # 0-d t broadcasts


def test_full_size_meta_shapes_and_parameter_budget():
    cfg = full_cheers_config().flow_head  # the shipped full-size preset
    with torch.device("meta"):
        head = FlowHead(cfg)
        v, gate = head(
            torch.empty(2, 256, 1536), torch.empty(2), torch.empty(2, 1024, 1152), (16, 16), return_gate=True
        )
    assert v.shape == (2, 128, 32, 32) and gate.shape == (2, 1024)

    def count(prefix: str) -> float:
        return sum(p.numel() for n, p in head.named_parameters() if n.startswith(prefix)) / 1e6

    # DESIGN.md 1.4: stage 1 ≈ 348M, stage 2 ≈ 83M, gate ≈ 1.3M, time embedders ≈ 4.4M
    assert count("stage1.") == pytest.approx(348, rel=0.02)
    assert count("stage2.") == pytest.approx(83, rel=0.02)
    assert count("time_embed") == pytest.approx(4.4, rel=0.02)
    # the gate is fixed by the design (1152→1152→SiLU→1, ≈1.33M); 1.3M is that number to two digits
    assert count("hfi.gate.") == pytest.approx((1152 * 1152 + 1152 + 1152 + 1) / 1e6)
    assert abs(count("hfi.") - 1.3) < 0.05


def test_stage1_pixel_shuffle_feeds_injection():
    """Stage 1 gives f²·sem_dim channels on the h×w grid; pixel-shuffled, they are the (hf·wf)×sem_dim grid Z'."""
    cfg = FlowHeadConfig(injection="off")
    head = FlowHead(cfg)
    h_BNC, t_B, _ = _inputs(cfg, grid_hw=(2, 3))
    z_BNC = head.stage1(h_BNC, head.time_embed1(t_B))
    assert z_BNC.shape == (2, 6, 4 * cfg.sem_dim)
    seen = {}
    head.hfi.register_forward_hook(lambda mod, args, out: seen.update(z=args[0]))
    head(h_BNC, t_B, None, (2, 3))
    assert seen["z"].shape == (2, 24, cfg.sem_dim)
    torch.testing.assert_close(seen["z"], shuffle_tokens(z_BNC, (2, 3), 2))
    # channel c·4 + i·2 + j of coarse token (r, s) is channel c of fine token (2r + i, 2s + j) in a 4×6 raster
    r, s, c, i, j = 1, 2, 3, 1, 0
    assert seen["z"][0, (2 * r + i) * 6 + 2 * s + j, c] == z_BNC[0, r * 3 + s, c * 4 + i * 2 + j]


def test_gated_equals_off_at_init_and_differs_once_gate_moves():
    gated = FlowHead(FlowHeadConfig(injection="gated"))
    _perturb_zero_inits(gated, skip="hfi.gate.2")
    off = FlowHead(FlowHeadConfig(injection="off"))
    missing, unexpected = off.load_state_dict(gated.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == [f"hfi.gate.{i}.{k}" for i in (0, 2) for k in ("bias", "weight")]
    h_BNC, t_B, detail = _inputs(gated.cfg)
    v_gated = gated(h_BNC, t_B, detail, (4, 4))
    v_off = off(h_BNC, t_B, None, (4, 4))
    assert v_off.abs().sum() > 0
    assert torch.equal(v_gated, v_off)
    _perturb_zero_inits(gated.hfi.gate)
    v_moved, g = gated(h_BNC, t_B, detail, (4, 4), return_gate=True)
    assert g.abs().sum() > 0
    assert not torch.allclose(v_moved, v_off)


def test_constant_injection_differs_from_off_and_reports_gate():
    const = FlowHead(FlowHeadConfig(injection="constant", constant_gate=0.5))
    _perturb_zero_inits(const)
    off = FlowHead(FlowHeadConfig(injection="off"))
    off.load_state_dict(const.state_dict())
    h_BNC, t_B, detail = _inputs(const.cfg)
    v_const, gate = const(h_BNC, t_B, detail, (4, 4), return_gate=True)
    assert torch.equal(gate, torch.full_like(gate, 0.5))
    assert not torch.allclose(v_const, off(h_BNC, t_B, detail, (4, 4)))
    with pytest.raises(ValueError, match="detail_BMC"):
        const(h_BNC, t_B, None, (4, 4))


def test_gradients_reach_every_parameter():
    head = FlowHead(FlowHeadConfig())
    _perturb_zero_inits(head)
    h_BNC, t_B, detail = _inputs(head.cfg)
    h_BNC.requires_grad_(True)
    head(h_BNC, t_B, detail, (4, 4)).square().sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert h_BNC.grad.abs().sum() > 0


def test_stage2_learns_from_init_without_perturbation():
    """At init v ≡ 0, yet the output layer gets a gradient (stage 1 output is not zero-initialised)."""
    head = FlowHead(FlowHeadConfig())
    h_BNC, t_B, detail = _inputs(head.cfg)
    v = head(h_BNC, t_B, detail, (4, 4))
    assert torch.equal(v, torch.zeros_like(v))
    (v - torch.randn_like(v)).square().mean().backward()
    assert head.stage2.final.linear.weight.grad.abs().sum() > 0


def test_determinism_under_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        head = FlowHead(FlowHeadConfig())
        _perturb_zero_inits(head)
        outs.append(head(*_inputs(head.cfg), (4, 4)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_config_and_input_validation():
    with pytest.raises(ValueError, match="injection"):
        FlowHeadConfig(injection="sometimes")
    with pytest.raises(ValueError, match="quote it"):  # `injection=off` on the command line arrives as False
        FlowHeadConfig(injection=False)
    with pytest.raises(ValueError, match="stage2_kv_heads"):
        FlowHeadConfig(stage2_heads=2, stage2_kv_heads=3)
    with pytest.raises(ValueError, match="stage1_heads"):
        FlowHeadConfig(stage1_heads=3)
    cfg = FlowHeadConfig()
    assert dataclasses.replace(cfg, stage1_mlp_dim=100).mlp_dim(1) == 100 and cfg.mlp_dim(2) == 512
    head = FlowHead(cfg)
    h_BNC, t_B, detail = _inputs(cfg)
    with pytest.raises(ValueError, match="grid_hw"):
        head(h_BNC, t_B, detail, (4, 5))
    with pytest.raises(ValueError, match="detail_BMC"):
        head(h_BNC, t_B, detail[:, :10], (4, 4))


def test_official_options_build_the_released_parameter_layout():
    """norm_weights: weighted RMSNorms in blocks and final layers; qkv_bias=False: no q/k/v biases; hfi eps."""
    cfg = FlowHeadConfig(norm_weights=True, qkv_bias=False, hfi_norm_eps=1e-5)
    names = {n for n, _ in FlowHead(cfg).named_parameters()}
    assert {"stage1.blocks.0.norm1.weight", "stage1.blocks.0.norm2.weight", "stage2.final.norm.weight"} <= names
    assert not any(n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for n in names)
    assert FlowHead(cfg).hfi.norm.eps == 1e-5 and FlowHead(FlowHeadConfig()).hfi.norm.eps == 1e-6
    native = {n for n, _ in FlowHead(FlowHeadConfig()).named_parameters()}
    assert "stage1.blocks.0.norm1.weight" not in native and "stage1.blocks.0.attn.q_proj.bias" in native


def test_stage2_half_twice_positions_make_the_two_halves_interchangeable():
    """The released stage 2 gives token i and token i + M/2 the same RoPE position: swapping the halves of its input
    swaps the halves of its output; with raster positions it does not."""
    torch.manual_seed(0)
    assert rope_positions(8, "half_twice").tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    results = {}
    for mode in ("half_twice", "raster"):
        torch.manual_seed(1)
        head = FlowHead(FlowHeadConfig(stage2_positions=mode))
        _perturb_zero_inits(head)
        x = torch.randn(2, 64, head.cfg.sem_dim)
        swap = torch.cat([x[:, 32:], x[:, :32]], dim=1)
        c = head.time_embed2(torch.rand(2))
        out, out_swapped = head.stage2(x, c), head.stage2(swap, c)
        results[mode] = torch.allclose(torch.cat([out[:, 32:], out[:, :32]], dim=1), out_swapped, atol=1e-5)
    assert results == {"half_twice": True, "raster": False}
    with pytest.raises(ValueError, match="stage2_positions"):
        FlowHeadConfig(stage2_positions="diagonal")


def test_pooled_prompt_is_identity_at_init_and_steers_once_trained():
    """`prompt_condition="pooled"` starts as the paper's head (zero-init maps) and then depends on the prompt."""
    pooled = FlowHead(FlowHeadConfig(prompt_condition="pooled"))
    _perturb_zero_inits(pooled, skip="prompt_embed")
    plain = FlowHead(FlowHeadConfig())
    missing, unexpected = plain.load_state_dict(pooled.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == [f"prompt_embed{i}.{k}" for i in (1, 2) for k in ("bias", "weight")]
    h_BNC, t_B, detail = _inputs(pooled.cfg)
    prompt_a, prompt_b = torch.randn(2, 128), torch.randn(2, 128)
    v_plain = plain(h_BNC, t_B, detail, (4, 4))
    assert torch.equal(pooled(h_BNC, t_B, detail, (4, 4), prompt_BC=prompt_a), v_plain)
    _perturb_zero_inits(pooled)
    v_a = pooled(h_BNC, t_B, detail, (4, 4), prompt_BC=prompt_a)
    assert not torch.allclose(v_a, pooled(h_BNC, t_B, detail, (4, 4), prompt_BC=prompt_b))
    with pytest.raises(ValueError, match="needs prompt_BC"):
        pooled(h_BNC, t_B, detail, (4, 4))
    with pytest.raises(ValueError, match="prompt_condition must be one of"):
        FlowHeadConfig(prompt_condition="mean")


def test_latent_skip_is_identity_at_init_and_reads_z_t_once_trained():
    """`latent_skip` starts as the paper's head (zero-init map of z_t) and then depends on z_t itself."""
    skip = FlowHead(FlowHeadConfig(latent_skip=True))
    _perturb_zero_inits(skip, skip="latent_embed")
    plain = FlowHead(FlowHeadConfig())
    missing, unexpected = plain.load_state_dict(skip.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["latent_embed.bias", "latent_embed.weight"]
    h_BNC, t_B, detail = _inputs(skip.cfg)
    z_a, z_b = torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)
    assert torch.equal(skip(h_BNC, t_B, detail, (4, 4), z_t_BLHW=z_a), plain(h_BNC, t_B, detail, (4, 4)))
    _perturb_zero_inits(skip)
    v_a = skip(h_BNC, t_B, detail, (4, 4), z_t_BLHW=z_a)
    assert not torch.allclose(v_a, skip(h_BNC, t_B, detail, (4, 4), z_t_BLHW=z_b))
    with pytest.raises(ValueError, match="latent_skip needs z_t_BLHW"):
        skip(h_BNC, t_B, detail, (4, 4), z_t_BLHW=z_a[:, :, :4])
