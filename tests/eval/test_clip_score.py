"""Tests for cheers_pl.eval.clip_score: matched vs mismatched prompts separate even where the clamped score is 0."""

import pytest
import torch

from cheers_pl.eval.clip_score import ContrastiveCLIPScore, matched_and_mismatched, mismatched


def test_gap_separates_a_prompt_following_scorer_whose_clamped_score_is_zero() -> None:
    texts = [f"prompt {i}" for i in range(6)]
    basis = torch.eye(6)
    offset = 2.0 * torch.ones(6)  # opposite offsets: every cosine negative, the clamped score reads 0

    def embed(images, prompts):
        idx = torch.tensor([int(p.split()[1]) for p in prompts])
        return images - offset, basis[idx] + offset

    metric = ContrastiveCLIPScore(embed)
    scores = matched_and_mismatched(metric, basis.clone(), texts)
    assert scores["clip_score"] == 0.0 == max(scores["matched_raw"], 0.0)
    assert scores["matched_raw"] < 0 and scores["gap"] > 1.0
    assert scores["gap"] == pytest.approx(scores["matched_raw"] - scores["mismatched_raw"])
    assert int(metric.n_samples) == 0  # reset after use


def test_mismatched_is_a_derangement() -> None:
    texts = ["a", "b", "c"]
    assert all(x != y for x, y in zip(texts, mismatched(texts), strict=True)) and sorted(mismatched(texts)) == texts
