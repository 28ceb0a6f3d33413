"""The diagnose command (issue 12's 1a–1d) on small sizes: its parts, its report files, and probes that could fail."""

import json
from pathlib import Path

import pytest
import torch

from cheers_pl.checkpoint import CONFIG_KEY
from cheers_pl.cli import main
from cheers_pl.config import compose, to_yaml
from cheers_pl.data.synthetic_scene import SyntheticConfig
from cheers_pl.diagnose.probes import run_probes
from cheers_pl.diagnose.run import DiagnoseArgs
from cheers_pl.stage import build_stage
from tests._models import FROM_TINY_TOKENIZER


@pytest.fixture(scope="module")
def tokenizer_ckpt(shard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer-stage checkpoint holding the committed tiny tokenizer's weights."""
    cfg = compose("tiny_tokenizer", [f"data.shard_dir={shard_dir}", "data.num_workers=0", *FROM_TINY_TOKENIZER])
    stage = build_stage(cfg)
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": stage.state_dict(), CONFIG_KEY: to_yaml(cfg), "global_step": 1}, path)
    return path


def test_probes_find_what_the_committed_tokenizer_carries(tokenizer_ckpt: Path) -> None:
    """Colour is in the pixels and in the trained semantic tokens far above the majority rate; the report holds
    every target for every feature set, and D(x1) reconstructs the scenes."""
    from cheers_pl.restore import load_stage

    stage = load_stage(str(tokenizer_ckpt))
    out = run_probes(stage.model.vision, SyntheticConfig(), num_train=300, num_test=100, steps=150)
    probes = out["probes"]
    assert set(probes) == {"pixels", "semantic", "llm"}
    for feature in ("pixels", "semantic"):
        colour = probes[feature]["color"]["mlp"]
        assert colour["accuracy"] > colour["chance"] + 0.3, (feature, colour)
    assert set(probes["semantic"]) == {"shape", "color", "texture", "size", "digit", "region", "count"}
    assert out["decoder_t1"]["psnr_decoder_t1"] > 30
    assert out["decoder_t1"]["parser_recovery"]["color"] > 0.9
    noise = out["noise_r2"]
    assert set(noise) == {"t=0.3", "t=0.7"}
    # the reference can fail: z_t = t·x1 + (1 − t)·x0 holds x0 linearly, more of it the closer t is to noise
    assert noise["t=0.3"]["z_t"] > 0.6 and noise["t=0.3"]["z_t"] > noise["t=0.7"]["z_t"], noise
    assert all(r["both"] >= max(r["detail"], r["z_t"]) - 0.02 for r in noise.values()), noise


def test_cli_profile_part_writes_both_reports(tokenizer_ckpt: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "diag"
    code = main(["diagnose", f"ckpt={tokenizer_ckpt}", "parts=[profile]", f"out_dir={out_dir}", "profile_steps=2",
                 "profile_experiments=[tiny_align]"])  # fmt: skip
    assert code == 0
    report = json.loads((out_dir / "diagnose.json").read_text())
    entry = report["profile"]["tiny_align"]
    assert set(entry) == {"cold", "warm"}  # tiny_align caches frozen results: the warm pass reads the cache
    shares = entry["cold"]["share"]
    assert abs(sum(shares.values()) - 1.0) < 0.02, shares
    assert all(shares.get(k, 0) > 0 for k in ("vae_encode", "pixel_decoder", "semantic_encoder", "llm", "flow_head"))
    assert "vae_encode" not in entry["warm"]["share"]  # every latent came from the cache
    assert "1d Where the time" in (out_dir / "diagnose.md").read_text()


def test_unknown_part_is_an_error() -> None:
    with pytest.raises(ValueError, match="parts"):
        DiagnoseArgs(ckpt="x", parts=["probes", "vibes"])
