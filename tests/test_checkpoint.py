"""Tests for cheers_pl.checkpoint: safe reading, atomic writing, the saved config, keys renamed since earlier releases
(R11)."""

import errno
import fractions
import multiprocessing
import os
import signal
import time

import pytest
import torch

from cheers_pl import checkpoint
from cheers_pl.checkpoint import (
    CONFIG_KEY,
    TRUSTED_ENV,
    AtomicCheckpointIO,
    check_stage_checkpoint,
    read_checkpoint,
    saved_config,
    upgrade_config,
    upgrade_state_dict,
)


def test_read_checkpoint_names_the_file_and_the_key(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"stage.init_from='.*nope.ckpt': no such file"):
        read_checkpoint(tmp_path / "nope.ckpt", "stage.init_from")
    (tmp_path / "text.ckpt").write_text("garbage\n")
    with pytest.raises(ValueError, match=r"ckpt='.*text.ckpt': not a PyTorch checkpoint \(no zip archive"):
        read_checkpoint(tmp_path / "text.ckpt")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"resume_from='.*cut.ckpt': not a PyTorch checkpoint .*truncated"):
        read_checkpoint(tmp_path / "cut.ckpt", "resume_from", mmap=True)
    torch.save(torch.zeros(3), tmp_path / "tensor.ckpt")
    with pytest.raises(ValueError, match=r"tensor.ckpt': holds a Tensor, not a checkpoint dict"):
        read_checkpoint(tmp_path / "tensor.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="no saved config .* not a cheers_pl checkpoint"):
        saved_config(read_checkpoint(tmp_path / "bare.ckpt"), tmp_path / "bare.ckpt")


def test_renamed_parameter_names_and_config_keys() -> None:
    state = {"model.tokenizer.vae.x": 1, "model.llm.tokenizer.y": 2, "model.contrastive.z": 3, "other.tokenizer.w": 4}
    assert upgrade_state_dict(state) == {
        "model.vision.vae.x": 1, "model.llm.tokenizer.y": 2, "model.contrastive.z": 3, "other.tokenizer.w": 4,
    }  # fmt: skip
    old = {
        "model": {"tokenizer": {"compression": 2}, "llm": {"dim": 8}},
        "data": {"tokenizer_vocab_size": 512, "text_tokenizer": None},
        "stage": {"trainable": ["model.tokenizer.compressor.*", "model.llm.*"]},
    }
    assert upgrade_config(old) == {
        "model": {"vision": {"compression": 2}, "llm": {"dim": 8}},
        "data": {"text_tokenizer_vocab_size": 512, "text_tokenizer": None},
        "stage": {"trainable": ["model.vision.compressor.*", "model.llm.*"]},
    }
    assert saved_config({CONFIG_KEY: "model:\n  tokenizer: {compression: 1}\n"}) == {
        "model": {"vision": {"compression": 1}}
    }


def test_a_file_that_needs_unpickling_is_refused_unless_trusted(tmp_path, monkeypatch) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "extra": fractions.Fraction(1, 3)}, path)
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    refused = rf"stage.init_from='.*foreign.ckpt': refused, .*fractions.Fraction.*{TRUSTED_ENV}"
    with pytest.raises(ValueError, match=refused):
        read_checkpoint(path, "stage.init_from")
    assert read_checkpoint(path, trusted=True)["extra"] == fractions.Fraction(1, 3)
    monkeypatch.setenv(TRUSTED_ENV, os.pathsep.join([str(tmp_path / "other.ckpt"), str(path)]))
    assert read_checkpoint(path)["extra"] == fractions.Fraction(1, 3)


def test_stage_checkpoint_check_names_what_is_missing(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"resume_from='x.ckpt': not a cheers_pl training checkpoint .*'loops'"):
        check_stage_checkpoint({"state_dict": {}, CONFIG_KEY: "", "global_step": 1}, "x.ckpt", "resume_from")
    check_stage_checkpoint({"state_dict": {}, CONFIG_KEY: "", "global_step": 1, "loops": {}}, "x.ckpt")


def test_atomic_write_replaces_the_file_and_records_the_step(tmp_path) -> None:
    io, target = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.ones(2)}, target)
    io.save_checkpoint({"global_step": 5, "w": torch.full((2,), 2.0)}, target)
    assert torch.equal(read_checkpoint(target)["w"], torch.full((2,), 2.0))
    assert io.last_written == (str(target), 5) and io.failed_writes == 0
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_disk_full_during_a_write_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, caplog) -> None:
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, target)

    def full_disk(ckpt: dict, partial) -> None:
        partial.write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "write_partial", full_disk)
    io.save_checkpoint({"global_step": 2, "w": torch.zeros(4)}, target)  # does not raise: other ranks wait on us
    assert torch.equal(read_checkpoint(target)["w"], torch.ones(4)) and read_checkpoint(target)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the partial file is gone
    assert io.failed_writes == 1 and io.last_written == (str(target), 1)
    assert "No space left on device" in io.last_error and "previous checkpoint there is unchanged" in io.last_error
    assert any("not written" in r.getMessage() for r in caplog.records)


def _write_then_hang(target: str, marker: str) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, target)
    real = checkpoint.write_partial

    def slow(ckpt: dict, partial) -> None:
        real(ckpt, partial)
        with open(partial, "r+b") as f:
            f.truncate(os.path.getsize(partial) // 2)  # half written when the kill comes
        open(marker, "w").close()
        time.sleep(60)

    checkpoint.write_partial = slow
    io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, target)


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path) -> None:
    target, marker = tmp_path / "last.ckpt", tmp_path / "writing"
    child = multiprocessing.get_context("fork").Process(target=_write_then_hang, args=(str(target), str(marker)))
    child.start()
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and child.is_alive():
        time.sleep(0.05)
    assert marker.exists(), "the child never reached the second write"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    ckpt = read_checkpoint(target)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["w"], torch.ones(1000))
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.partial-")]
    assert len(stale) == 1  # the killed writer's half file, never read as a checkpoint
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, target)  # the next write clears it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "writing"]
