import pytest
import torch

from cheers_pl.model.layers import masked_mean


def test_masked_mean_is_the_mean_of_the_kept_positions():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[False, True, True, False], [False, False, False, False]])
    pooled = masked_mean(x, mask)
    torch.testing.assert_close(pooled[0], x[0, 1:3].mean(0))
    assert torch.equal(pooled[1], torch.zeros(3))  # a row without kept positions pools to zero
    with pytest.raises(ValueError, match="bool B×L"):
        masked_mean(x, mask.long())
    with pytest.raises(ValueError, match="bool B×L"):
        masked_mean(x, mask[:, :3])
