"""The CLI shell (cheers_pl/cli.py)."""

import json
from pathlib import Path

import pytest

from cheers_pl.cli import COMMANDS, main


def test_help_lists_the_commands(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_and_bad_key_fail_with_a_message(capsys: pytest.CaptureFixture) -> None:
    assert main(["frobnicate"]) == 2
    assert main(["make-shards", "experiment=tiny_data", "data.no_such_key=1"]) == 2
    assert "data.no_such_key" in capsys.readouterr().err


def test_make_shards_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [f"data.shard_dir={tmp_path}", "data.num_samples.train=30", "data.num_samples.val=10"]
    args += ["data.num_samples.test=10", "data.samples_per_shard=20", "data.text_tokenizer_vocab_size=400"]
    assert main(["make-shards", "experiment=tiny_data", *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"shard_dir": str(tmp_path), "train": 30, "val": 10, "test": 10}
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["test-000000.tar", "train-000000.tar",
                                                              "train-000001.tar", "val-000000.tar"]  # fmt: skip
    assert (tmp_path / "manifest.json").exists() and (tmp_path / "tokenizer" / "tokenizer.json").exists()
