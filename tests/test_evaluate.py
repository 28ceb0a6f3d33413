"""End-to-end tests of the evaluate command on tiny randomly initialised checkpoints."""

import json
import math
from pathlib import Path

import pytest
import torch

from cheers_pl.checkpoint import CONFIG_KEY
from cheers_pl.cli import main
from cheers_pl.config import compose, to_yaml
from cheers_pl.eval.geneval_prompts import load_prompts, prompts_hash
from cheers_pl.eval.report import sha256_file
from cheers_pl.evaluate import EvaluateArgs, default_out_dir, run
from cheers_pl.stage import build_stage


def _save_ckpt(experiment: str, shard_dir: Path, path: Path, *overrides: str) -> Path:
    cfg = compose(
        experiment,
        [f"data.shard_dir={shard_dir}", "data.num_workers=0", "stage.init_from=null", *overrides],
    )
    stage = build_stage(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": stage.state_dict(), CONFIG_KEY: to_yaml(cfg), "global_step": 7}, path)
    return path


@pytest.fixture(scope="module")
def align_ckpt(shard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "last.ckpt"
    return _save_ckpt("tiny_align", shard_dir, path, "callbacks.fid.num_images=4", "callbacks.fid.batch_size=4")


@pytest.fixture(scope="module")
def report(align_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    out = tmp_path_factory.mktemp("eval")
    args = EvaluateArgs(
        ckpt=str(align_ckpt),
        out_dir=str(out),
        per_category=1,
        images_per_prompt=1,
        seeds=[0, 1],
        num_steps=1,
        guidance_scale=2.0,
        max_vqa=10,
        max_recon=4,
        max_retrieval=40,
        num_photos=1,
        batch_size=8,
    )
    result = run(args)
    return result, json.loads((out / "report.json").read_text()), out


def test_report_files_and_top_level_protocol(report: tuple[dict, dict, Path], align_ckpt: Path) -> None:
    result, rep, out = report
    assert Path(result["report_json"]) == out / "report.json" and (out / "report.md").is_file()
    protocol = rep["protocol"]
    assert protocol["checkpoint_sha256"] == sha256_file(align_ckpt)
    assert protocol["stage"] == "align" and protocol["global_step"] == 7 and protocol["split"] == "test"
    assert protocol["seeds"] == [0, 1] and protocol["num_steps"] == 1 and protocol["guidance_scale"] == 2.0
    assert protocol["alpha"] == 0.5 and protocol["sampler"] == "euler"  # unset: the stage's stage.sampling values
    md = (out / "report.md").read_text()
    for text in ("## Generation", "## Understanding", "## Reconstruction", "## Distribution", protocol["created"]):
        assert text in md


def test_generation_section_scores_protocol_and_grids(report: tuple[dict, dict, Path]) -> None:
    _, rep, out = report
    gen = rep["generation"]
    p = gen["protocol"]
    assert p["num_prompts"] == 6 and p["num_images"] == 12 and p["images_per_prompt"] == 1 and p["seeds"] == [0, 1]
    assert p["num_steps"] == 1 and p["guidance_scale"] == 2.0 and p["alpha"] == 0.5 and p["sampler"] == "euler"
    prompts = load_prompts(out / p["prompts_file"])
    assert p["prompts_file_sha256"] == sha256_file(out / p["prompts_file"]) == prompts_hash(prompts)
    assert set(gen["scores"]) >= {"single_object", "counting", "position", "overall", "in_distribution"}
    assert all(0.0 <= v <= 1.0 for v in gen["scores"].values())
    assert gen["counts"]["in_distribution"][1] == 12 and gen["counts"]["held_out"][1] == 0  # prefix: in-dist first
    assert p["num_held_out_prompts"] == 0
    for category, grid in gen["grids"].items():
        assert (out / grid["file"]).is_file() and len(grid["prompts"]) == 1, category


def test_understanding_section_asks_every_question(report: tuple[dict, dict, Path]) -> None:
    _, rep, _ = report
    und = rep["understanding"]
    assert und["protocol"]["num_questions"] == 10 and und["protocol"]["split"] == "test"
    assert und["counts"]["overall"][1] == 10
    assert sum(total for key, (_, total) in und["counts"].items() if key in ("held_out", "in_distribution")) == 10
    assert 0.0 <= und["scores"]["overall"] <= 1.0
    assert und["examples"] and {"question", "answer", "prediction", "correct"} <= set(und["examples"][0])


def test_reconstruction_and_distribution_sections(report: tuple[dict, dict, Path]) -> None:
    _, rep, out = report
    rec = rep["reconstruction"]
    assert rec["protocol"]["num_synthetic"] == 4 and rec["protocol"]["photos"] == ["astronaut/crop", "astronaut/resize"]
    for image_set in ("synthetic", "photos"):
        assert set(rec[image_set]) == {"vae", "decoder_t1"}
        assert all(math.isfinite(v) for m in rec[image_set].values() for v in m.values())
        assert (out / rec["grids"][image_set]).is_file()
    fid, clip = rep["distribution"]["fid"], rep["distribution"]["clip_score"]
    assert (
        math.isfinite(fid["value"]) and fid["protocol"]["num_images"] == 4 and fid["protocol"]["feature"] == "semantic"
    )
    assert "not configured" in clip["skipped"]
    parser = rec["synthetic_parser"]
    assert set(parser) == {"vae", "decoder_t1"} and all(0.0 <= parser["vae"][k] <= 1.0 for k in ("shape", "color"))


def test_retrieval_section_scores_groups_of_32(report: tuple[dict, dict, Path]) -> None:
    _, rep, _ = report
    ret = rep["retrieval"]
    assert ret["scores"]["num_groups"] == 1 and ret["scores"]["num_candidates"] == 32  # 40 pairs: one full group
    assert ret["scores"]["chance"] == 1 / 32 and 0.0 <= ret["scores"]["top1"] <= 1.0
    assert ret["protocol"]["pairs"] == 40


def test_manifest_hashes_every_output(report: tuple[dict, dict, Path]) -> None:
    _, rep, out = report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["protocol"]["checkpoint_sha256"] == rep["protocol"]["checkpoint_sha256"]
    assert {"report.json", "report.md", "samples_counting.png", "reconstruction_photos.png"} <= set(manifest["files"])
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(out / name)


def test_cli_default_out_dir_and_sections(align_ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["evaluate", f"ckpt={align_ckpt}", "sections=[understanding]", "max_vqa=2", "data.num_workers=0"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    out = default_out_dir(align_ckpt)
    assert out == align_ckpt.parent.parent / "eval" and Path(printed["out_dir"]) == out
    rep = json.loads((out / "report.json").read_text())
    assert rep["protocol"]["overrides"] == ["data.num_workers=0"]
    assert "not requested" in rep["generation"]["skipped"] and rep["understanding"]["protocol"]["num_questions"] == 2


def test_cli_argument_errors(align_ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate"]) == 2
    assert "ckpt" in capsys.readouterr().err
    assert main(["evaluate", f"ckpt={align_ckpt}", "per_category=0"]) == 2
    assert "per_category" in capsys.readouterr().err
    assert main(["evaluate", "ckpt=/nonexistent.ckpt"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_tokenizer_checkpoint_skips_generation_and_understanding(shard_dir: Path, tmp_path: Path) -> None:
    ckpt = _save_ckpt("tiny_tokenizer", shard_dir, tmp_path / "tok.ckpt")
    run(EvaluateArgs(ckpt=str(ckpt), out_dir=str(tmp_path / "eval"), max_recon=2, num_photos=1, batch_size=4))
    rep = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "generate_images" in rep["generation"]["skipped"] and "answer" in rep["understanding"]["skipped"]
    assert "psnr" in rep["reconstruction"]["synthetic"]["vae"]
    assert "skipped" in rep["distribution"]["fid"]
