"""`convert-official` (cheers_pl/convert.py): the released layout → a pipeline directory that loads in bf16 and runs."""

import json
from pathlib import Path

import pytest
import torch

from cheers_pl.cli import main
from cheers_pl.convert import ConvertArgs, run
from cheers_pl.data.text_tokenizer import CHEERS_SPECIAL_TOKENS
from cheers_pl.model.weights import INDEX_FILE, read_state
from cheers_pl.official.conversion import to_official_state
from cheers_pl.pipeline import CheersPipeline
from tests._official import TINY_CONFIG, random_official_state, write_official_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "official"


@pytest.fixture(scope="module")
def src_and_dst(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("convert")
    state = random_official_state(seed=5)
    src = write_official_checkpoint(root / "src", state)
    report = run(ConvertArgs(src=str(src), dst=str(root / "dst"), max_shard_size=300_000))
    return src, root / "dst", {"report": report, "state": state}


def test_check_only_on_the_release_index_accounts_for_all_1321(capsys: pytest.CaptureFixture) -> None:
    assert main(["convert-official", "check_only=true", f"src={FIXTURES / 'checkpoint'}"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accounted_for"] == report["tensors"] == 1321 and report["bytes_difference"] == 0
    assert main(["convert-official", f"src={FIXTURES / 'checkpoint'}"]) == 2  # dst is required
    assert "dst=DIR is required" in capsys.readouterr().err


def test_converted_directory_is_sharded_bf16_and_round_trips(src_and_dst: tuple) -> None:
    _, dst, info = src_and_dst
    report = info["report"]
    assert report["accounted_for"] == report["tensors"] and report["lm_head"] == "untied"
    assert report["dtypes"] == ["bfloat16", "int64"]
    shards = json.loads((dst / INDEX_FILE).read_text())["weight_map"]
    assert len(set(shards.values())) > 1 and {"pipeline.json", "tokenizer", "cheers_config.json"} <= set(
        report["files"]
    )
    assert list(report["special_token_ids"]) == list(CHEERS_SPECIAL_TOKENS)
    pipe = CheersPipeline.from_pretrained(dst)
    back = to_official_state(read_state(dst), pipe.model.cfg)
    assert all(torch.equal(t, info["state"][n]) for n, t in back.items()) and len(back) == len(info["state"]) - 11


def test_converted_pipeline_loads_in_bf16_and_runs(src_and_dst: tuple) -> None:
    """Strict load (no missing or unexpected key), the stored bf16 kept, the released settings, forward and sampling."""
    _, dst, _ = src_and_dst
    pipe = CheersPipeline.from_pretrained(dst)
    dtypes = {p.dtype for p in pipe.model.parameters()}
    assert dtypes == {torch.bfloat16} and pipe.model.vision.pixel_decoder.bn.running_var.dtype == torch.bfloat16
    assert pipe.sampling.time_grid == "official" and pipe.sampling.unconditional == "all_text"
    assert pipe.processing.system_prompt == "You are a helpful assistant." and pipe.processing.pad_fill == "black"
    pipe = CheersPipeline.from_pretrained(dst, dtype=torch.float32)
    out = pipe.generate(["a red circle"], num_steps=2, guidance_scale=2.0)
    assert out.images.shape == (1, 3, 32, 32) and torch.isfinite(out.latents).all()
    answers = pipe.answer(out.images, ["what is it?"], max_new_tokens=3)
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_tokenizer_larger_than_the_embedding_is_an_error(tmp_path: Path) -> None:
    config = json.loads(json.dumps(TINY_CONFIG))
    config["text_config"]["vocab_size"] = 64
    src = write_official_checkpoint(tmp_path / "src", random_official_state(config), config)
    with pytest.raises(ValueError, match="embedding 64 rows"):
        run(ConvertArgs(src=str(src), dst=str(tmp_path / "dst")))
