"""Token-attribute heads (cheers_pl/model/attribute_heads.py)."""

import pytest
import torch

from cheers_pl.model.attribute_heads import AttributeHeads, AttributeHeadsConfig


def test_one_logits_tensor_per_attribute_and_errors() -> None:
    heads = AttributeHeads(AttributeHeadsConfig(dim=16, num_classes=(3, 5)))
    out = heads(torch.randn(2, 4, 16))
    assert [tuple(o.shape) for o in out] == [(2, 4, 3), (2, 4, 5)]
    with pytest.raises(ValueError, match="tokens must be B,M,16"):
        heads(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match=">= 2 classes"):
        AttributeHeadsConfig(dim=16, num_classes=(1,))
