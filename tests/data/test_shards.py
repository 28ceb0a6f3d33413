"""make-shards: shards, manifest and tokenizer (cheers_pl/data/shards.py)."""

import json
from pathlib import Path

from cheers_pl.data.text_tokenizer import CHEERS_SPECIAL_TOKENS, load_text_tokenizer
from cheers_pl.data.webdataset import EventCounter, raw_samples, resolve_shards


def test_manifest_counts_match_the_shards(shard_dir: Path) -> None:
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["synthetic"]["image_size"] == 64
    for split, expected in (("train", 240), ("val", 64), ("test", 64)):
        info = manifest["splits"][split]
        assert info["num_samples"] == expected
        urls = resolve_shards(str(shard_dir / f"{split}-*.tar"))
        assert sorted(Path(u).name for u in urls) == info["shards"]
        keys = [r["__key__"] for r in raw_samples(urls, EventCounter(), rank=0, world_size=1, resampled=False, seed=0)]
        assert keys == [f"{split}_{i:08d}" for i in range(expected)]


def test_tokenizer_is_saved_with_the_special_tokens(shard_dir: Path) -> None:
    tok = load_text_tokenizer(str(shard_dir / "tokenizer"))
    assert all(t in tok.get_vocab() for t in CHEERS_SPECIAL_TOKENS)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == len(tok)
