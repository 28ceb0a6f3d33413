"""Unsafe, truncated or foreign files given to the commands: one `error:` line naming the key and the file (R15).

`resume_from` and `stage.init_from` (train), `ckpt` (evaluate, answer, sample) and `image` (answer), through the CLI
as a user types them.
"""

import fractions
from pathlib import Path

import pytest
import torch

from cheers_pl.checkpoint import CONFIG_KEY
from cheers_pl.cli import main
from cheers_pl.config import compose, to_yaml
from cheers_pl.export import export_checkpoint
from cheers_pl.stage import build_stage


@pytest.fixture(scope="module")
def files(shard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("inputs")
    cfg = compose("tiny_align", [f"data.shard_dir={shard_dir}", "stage.init_from=null"])
    weights = {"state_dict": build_stage(cfg).state_dict(), CONFIG_KEY: to_yaml(cfg)}
    torch.save(weights, out / "weights.ckpt")  # a stage's weights, not a training checkpoint
    data = (out / "weights.ckpt").read_bytes()
    (out / "cut.ckpt").write_bytes(data[: len(data) // 3])
    (out / "text.ckpt").write_text("garbage\n")
    torch.save({"state_dict": {}, "payload": fractions.Fraction(1, 3)}, out / "pickled.ckpt")
    torch.save({"w": torch.zeros(2)}, out / "foreign.ckpt")
    (out / "not_an_image.png").write_text("this is text")
    weights_file = export_checkpoint(out / "weights.ckpt", out / "exported") / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])  # an exported directory with a cut weights file
    return {p.stem: p for p in out.iterdir()}


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err  # one line, no traceback
    return err


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("text", "not a PyTorch checkpoint (no zip archive"),
        ("cut", "not a PyTorch checkpoint (no zip archive: truncated"),
        ("pickled", "refused, loading it would run pickled code (fractions.Fraction)"),
        ("foreign", "no saved config"),
    ],
)
@pytest.mark.parametrize("command", ["answer", "sample", "evaluate"])
def test_a_bad_ckpt_is_one_error_naming_the_file(capsys, files, command: str, name: str, message: str) -> None:
    extra = {"answer": ["image=x.png", "question=q"], "sample": ["prompt=p"], "evaluate": []}[command]
    err = _error(capsys, [command, f"ckpt={files[name]}", *extra])
    assert f"ckpt='{files[name]}'" in err and message in err


@pytest.mark.parametrize("command", ["answer", "sample"])
def test_an_exported_directory_with_a_cut_weights_file_names_it(capsys, files, command: str) -> None:
    extra = ["image=x.png", "question=q"] if command == "answer" else ["prompt=p"]
    err = _error(capsys, [command, f"ckpt={files['exported']}", *extra])
    assert f"'{files['exported'] / 'model.safetensors'}': cannot read safetensors weights" in err


def test_an_image_that_is_not_one_names_the_file(capsys, files) -> None:
    err = _error(capsys, ["answer", f"ckpt={files['weights']}", f"image={files['not_an_image']}", "question=q"])
    assert f"image='{files['not_an_image']}': not an image file PIL can decode" in err


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cut", "not a PyTorch checkpoint"),
        ("pickled", "refused, loading it would run pickled code"),
        ("weights", "not a cheers_pl training checkpoint (no ['loops', 'global_step'])"),
    ],
)
def test_a_bad_resume_from_is_refused_before_training(capsys, files, shard_dir, tmp_path, name, message) -> None:
    argv = ["train", "experiment=tiny_align", f"data.shard_dir={shard_dir}", "stage.init_from=null"]
    err = _error(capsys, [*argv, f"output_root={tmp_path}", f"resume_from={files[name]}"])
    assert f"resume_from='{files[name]}'" in err and message in err
    assert not (tmp_path / "tiny_align").exists()  # refused before anything was written


def test_a_bad_init_from_names_the_key_and_the_file(capsys, files, shard_dir, tmp_path) -> None:
    argv = ["train", "experiment=tiny_align", f"data.shard_dir={shard_dir}", f"output_root={tmp_path}"]
    err = _error(capsys, [*argv, f"stage.init_from={files['pickled']}"])
    assert f"stage.init_from='{files['pickled']}': refused" in err
