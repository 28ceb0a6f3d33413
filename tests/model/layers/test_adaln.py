import torch

from cheers_pl.model.layers import AdaLNZero, modulate


def test_adaln_zero_outputs_zero_at_init():
    ada = AdaLNZero(cond_dim=12, dim=8, num_chunks=6)
    chunks = ada(torch.randn(3, 12))
    assert len(chunks) == 6
    for chunk in chunks:
        assert chunk.shape == (3, 8)
        assert torch.equal(chunk, torch.zeros_like(chunk))


def test_adaln_zero_receives_gradient_and_modulate_broadcasts():
    ada = AdaLNZero(cond_dim=4, dim=5, num_chunks=2)
    x = torch.randn(2, 3, 5)
    shift, scale = ada(torch.randn(2, 4))
    torch.testing.assert_close(modulate(x, shift, scale), x)  # identity at init
    (modulate(x, shift, scale) * torch.randn_like(x)).sum().backward()
    assert ada.linear.weight.grad.abs().sum() > 0
    s, c = torch.randn(2, 5), torch.randn(2, 5)
    torch.testing.assert_close(modulate(x, s, c), x * (1 + c[:, None]) + s[:, None])


def test_float32_modulation_of_bf16_inputs_rounds_once():
    """compute_dtype=float32 (the released code) evaluates x·(1 + scale) + shift in fp32 and rounds once to bf16."""
    g = torch.Generator().manual_seed(0)
    x, shift, scale = (torch.randn(4, 64, 32, generator=g).bfloat16(), torch.randn(4, 32, generator=g).bfloat16(),
                       torch.randn(4, 32, generator=g).bfloat16())  # fmt: skip
    fp32 = modulate(x, shift, scale, compute_dtype=torch.float32)
    expected = (x.float() * (1 + scale.float()[:, None]) + shift.float()[:, None]).bfloat16()
    assert fp32.dtype == torch.bfloat16 and torch.equal(fp32, expected)
    assert not torch.equal(modulate(x, shift, scale), fp32)  # bf16 arithmetic rounds twice
