"""`answer`, `sample`, `edit` commands (cheers_pl/sample.py) on an exported tiny pipeline directory."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cheers_pl.cli import main
from tests._models import perturbed_pipeline


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return perturbed_pipeline(llm_noise=0.2).save_pretrained(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)  # not square: padded
    return path


def test_edit_command_writes_seeded_pngs(export: Path, scene: Path, tmp_path: Path, capsys) -> None:
    args = ["edit", f"ckpt={export}", f"image={scene}", "instruction=make it red", "num_images=2", "num_steps=4",
            "guidance_scale=2.0", "t0=0.5"]  # fmt: skip
    assert main([*args, f"out_dir={tmp_path / 'a'}"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert [Path(f).name for f in files] == ["edit_0_00.png", "edit_0_01.png"]
    assert Image.open(files[0]).size == (64, 64)
    assert main([*args, f"out_dir={tmp_path / 'b'}"]) == 0
    assert (tmp_path / "b" / "edit_0_01.png").read_bytes() == Path(files[1]).read_bytes()
    assert main(["edit", f"ckpt={export}", "image=missing.png", "instruction=x"]) == 2
    assert "image='missing.png': no such file" in capsys.readouterr().err


def test_answer_and_sample_take_an_exported_directory(export: Path, scene: Path, tmp_path: Path, capsys) -> None:
    assert main(["answer", f"ckpt={export}", f"image={scene}", "question=how many?", "max_new_tokens=3"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["answer"], str)
    assert main(["sample", f"ckpt={export}", "prompt=a red circle", "num_images=1", "num_steps=2",
                 "time_grid=official", f"out_dir={tmp_path}"]) == 0  # fmt: skip
    assert (tmp_path / "sample_0_00.png").is_file()
    assert main(["sample", f"ckpt={export}", "prompt=x", "model.llm.dim=8"]) == 2  # overrides: stage checkpoints only
    assert "apply to stage checkpoints only" in capsys.readouterr().err
