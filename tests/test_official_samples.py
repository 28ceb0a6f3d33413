"""`geneval-samples` / `dpg-samples` (cheers_pl/official_samples.py): the exact layouts on the tiny preset (CPU)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cheers_pl.cli import main
from cheers_pl.official_samples import DPGArgs, GenEvalArgs, dpg_samples, geneval_samples, load_dpg_prompts, load_jsonl
from tests._models import perturbed_pipeline

FAST = ["num_steps=2", "guidance_scale=2.0"]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-preset pipeline directory (64×64)."""
    return perturbed_pipeline(llm_noise=0.2).save_pretrained(tmp_path_factory.mktemp("tiny") / "export")


def test_geneval_folders_are_the_official_layout(export: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "geneval"
    assert main(["geneval-samples", f"ckpt={export}", f"out_dir={out}", "limit=3", *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 3
    metadata = load_jsonl(GenEvalArgs().metadata, ("prompt",))
    assert len(metadata) == 553
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002", "protocol.json"]
    for index in range(3):
        folder = out / f"{index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == metadata[index]  # json.load-able, one object
        files = sorted(p.name for p in (folder / "samples").iterdir())
        assert files == ["00000.png", "00001.png", "00002.png", "00003.png"]
        assert all(Image.open(folder / "samples" / f).size == (64, 64) for f in files)
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["sampling"]["num_steps"] == 2 and protocol["sampling"]["alpha"] == 1.0  # official: no α warp
    assert protocol["prompts_sha256"] and protocol["checkpoint_sha256"] and protocol["images_per_prompt"] == 4
    first = (out / "00001" / "samples" / "00002.png").read_bytes()
    again = geneval_samples(GenEvalArgs(ckpt=str(export), out_dir=str(out), limit=2, skip_existing=False,
                                        num_steps=2, guidance_scale=2.0))  # fmt: skip
    assert again["written"] == 2 and (out / "00001" / "samples" / "00002.png").read_bytes() == first  # seeded
    assert geneval_samples(GenEvalArgs(ckpt=str(export), out_dir=str(out), limit=3, num_steps=2))["written"] == 0


def test_geneval_defaults_are_the_official_script_settings() -> None:
    args = GenEvalArgs(ckpt="x")
    assert (args.num_steps, args.guidance_scale, args.alpha, args.num_images) == (80, 9.5, 1.0, 4)
    args = DPGArgs(ckpt="x")
    assert (args.num_steps, args.guidance_scale, args.alpha, args.num_images) == (250, 9.5, 0.5, 4)


def test_dpg_grids_are_the_official_layout(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpg"
    result = dpg_samples(DPGArgs(ckpt=str(export), out_dir=str(out), limit=2, num_steps=2, guidance_scale=2.0))
    assert result["written"] == 2 and sorted(p.name for p in out.iterdir()) == ["0.jpg", "1.jpg", "protocol.json"]
    grid = np.asarray(Image.open(out / "0.jpg"))
    assert grid.shape == (128, 128, 3)
    pipe = perturbed_pipeline(llm_noise=0.2)
    prompt = load_dpg_prompts(DPGArgs().prompts)[0]["prompt"]
    images = pipe.generate([prompt] * 4, seed=0, num_steps=2, guidance_scale=2.0).images
    quadrants = [grid[:64, :64], grid[:64, 64:], grid[64:, :64], grid[64:, 64:]]  # 2×2 in generation order
    pixels = ((images + 1) / 2 * 255).permute(0, 2, 3, 1).numpy()
    errors = np.array([[np.abs(image - q).mean() for image in pixels] for q in quadrants])  # JPEG: lossy
    assert errors.argmin(axis=1).tolist() == [0, 1, 2, 3] and errors.min(axis=1).max() < 20
    with pytest.raises(ValueError, match="2×2 grid"):
        dpg_samples(DPGArgs(ckpt=str(export), out_dir=str(out), num_images=2))


def test_dpg_prompts_from_benchmark_txt_folder(tmp_path: Path) -> None:
    for name, text in (("10", "ten"), ("2", "two"), ("1", "one")):
        (tmp_path / f"{name}.txt").write_text(text)
    assert load_dpg_prompts(tmp_path) == [{"id": "1", "prompt": "one"}, {"id": "2", "prompt": "two"},
                                          {"id": "10", "prompt": "ten"}]  # fmt: skip
    assert len(load_dpg_prompts(DPGArgs().prompts)) == 1065
    (tmp_path / "bad.jsonl").write_text('{"id": "0"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing keys \['prompt'\]"):
        load_dpg_prompts(tmp_path / "bad.jsonl")
