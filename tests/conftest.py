"""Shared test fixtures and the `gpu` marker's skip rule."""

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic shard set (train 240 / val 64 / test 64, 40 per shard) with its tokenizer, built once."""
    from cheers_pl.data.datamodule import DataConfig
    from cheers_pl.data.shards import write_all

    out = tmp_path_factory.mktemp("shards")
    cfg = DataConfig(
        shard_dir=str(out),
        num_samples={"train": 240, "val": 64, "test": 64},
        samples_per_shard=40,
        text_tokenizer_vocab_size=512,
    )
    write_all(cfg, workers=2)
    return out


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer files of the release (`tests/fixtures/official/`) with the Cheers tokens (≈ 4 s)."""
    from pathlib import Path

    from cheers_pl.data.text_tokenizer import load_text_tokenizer

    return load_text_tokenizer(str(Path(__file__).parent / "fixtures" / "official" / "qwen2.5_tokenizer"))
