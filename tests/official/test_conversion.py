"""Plan, check and conversion of released-layout checkpoints (cheers_pl/official/conversion.py)."""

from pathlib import Path

import pytest
import torch

from cheers_pl.official.conversion import check_index, convert, to_official_state
from cheers_pl.official.names import TIED_HEAD_REASON
from tests._official import random_official_state, write_official_checkpoint
from tests.official.conftest import FIXTURES

HEAD = "model.vision_representation.head."


def test_release_index_is_fully_accounted_for_on_the_meta_device() -> None:
    """All 1321 released names map to one of ours or are dropped with a reason; bytes match the index."""
    report = check_index(FIXTURES / "checkpoint")
    assert report["tensors"] == report["accounted_for"] == 1321
    assert report["mapped"] == 1310 and report["unknown"] == [] and report["missing"] == []
    (reason, dropped), = report["dropped"].items()  # fmt: skip
    assert "pooling head" in reason and len(dropped) == 11 and all(n.startswith(HEAD) for n in dropped)
    assert abs(report["bytes_difference"]) <= 2**20 and report["index_total_size"] == 5_609_423_890


def test_tiny_checkpoint_converts_and_converts_back_bit_for_bit(official_state: dict, converted: tuple) -> None:
    cfg, state, plan = converted
    assert not cfg.llm.tie_word_embeddings and "llm.hf.lm_head.weight" in state
    assert len(plan.mapped) + len(plan.dropped) == len(official_state) and not plan.unknown and not plan.missing
    assert {t.dtype for t in state.values()} == {torch.bfloat16, torch.int64}  # as stored: no fp32 copy
    back = to_official_state(state, cfg)
    assert set(back) == {n for n in official_state if not n.startswith(HEAD)}
    for name, tensor in back.items():
        assert tensor.dtype == official_state[name].dtype and torch.equal(tensor, official_state[name]), name


def test_equal_lm_head_is_tied(tmp_path: Path) -> None:
    src = write_official_checkpoint(tmp_path / "tied", random_official_state(tied=True, seed=1))
    cfg, state, plan = convert(src)
    assert cfg.llm.tie_word_embeddings and "llm.hf.lm_head.weight" not in state
    assert plan.dropped["lm_head.weight"] == TIED_HEAD_REASON
    assert torch.equal(to_official_state(state, cfg)["lm_head.weight"], state["llm.hf.model.embed_tokens.weight"])


def test_unknown_and_missing_names_are_listed(tmp_path: Path, official_dir: Path) -> None:
    state = random_official_state(seed=2)
    state["model.extra_projector.weight"] = torch.zeros(2, dtype=torch.bfloat16)
    del state["model.hi_gate.layer_norm.bias"]
    src = write_official_checkpoint(tmp_path / "bad", state)
    with pytest.raises(
        ValueError, match=r"1 released tensors map to nothing \['model.extra_projector.weight'\]"
    ) as err:
        convert(src)
    assert "flow_head.hfi.norm.bias" in str(err.value)
    with pytest.raises(ValueError, match="model.extra_projector.weight"):
        check_index(src)


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    state = random_official_state(seed=3)
    state["model.hi_gate.gate.0.weight"] = torch.zeros(5, 5, dtype=torch.bfloat16)
    src = write_official_checkpoint(tmp_path / "shapes", state)
    with pytest.raises(ValueError, match=r"model.hi_gate.gate.0.weight \(5, 5\) -> flow_head.hfi.gate.0.weight"):
        convert(src)
