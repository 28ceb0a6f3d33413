"""Token classification loss (cheers_pl/objective/token_labels.py)."""

import pytest
import torch

from cheers_pl.objective.lm import IGNORE_INDEX
from cheers_pl.objective.token_labels import token_classification_loss


def test_sum_over_attributes_of_token_mean_cross_entropy_ignoring_unlabelled() -> None:
    labels = torch.tensor([[[0, 1, IGNORE_INDEX], [2, 2, 2]]])  # B=1, A=2, M=3
    sure = [torch.full((1, 3, 2), -50.0), torch.full((1, 3, 3), -50.0)]
    for a, logits in enumerate(sure):
        for m in range(3):
            if labels[0, a, m] != IGNORE_INDEX:
                logits[0, m, labels[0, a, m]] = 50.0
    assert token_classification_loss(sure, labels) < 1e-6
    uniform = [torch.zeros(1, 3, 2), torch.zeros(1, 3, 3)]
    loss = token_classification_loss(uniform, labels)
    torch.testing.assert_close(loss, torch.log(torch.tensor(2.0)) + torch.log(torch.tensor(3.0)))
    nothing = torch.full_like(labels, IGNORE_INDEX)
    logits = [torch.zeros(1, 3, 2, requires_grad=True), torch.zeros(1, 3, 3)]
    zero = token_classification_loss(logits, nothing)
    assert zero == 0 and zero.requires_grad
    with pytest.raises(ValueError, match="labels must be"):
        token_classification_loss(uniform, labels[:, :1])
