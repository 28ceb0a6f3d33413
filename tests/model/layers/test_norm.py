import pytest
import torch

from cheers_pl.model.layers import RMSNorm


def test_rmsnorm_unit_rms_and_weight():
    norm = RMSNorm(16, eps=1e-8)
    x = 5.0 * torch.randn(3, 4, 16)
    y = norm(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 4), atol=1e-4, rtol=0)
    with torch.no_grad():
        norm.weight.fill_(2.0)
    torch.testing.assert_close(norm(x), 2 * y)


def test_rmsnorm_keeps_bf16_and_no_affine():
    norm = RMSNorm(8, affine=False)
    assert list(norm.parameters()) == []
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16


def test_rmsnorm_rejects_bad_config():
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(8, eps=0.0)
