"""`make-shards`: writes the synthetic world as train/val/test WebDataset shards, a manifest and the tiny tokenizer.

Sample i of split s is a pure function of (seed, s, i), so shards are written in parallel processes and any shard can
be regenerated alone.
"""

import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cheers_pl.data.datamodule import SPLITS, DataConfig
from cheers_pl.data.synthetic import SyntheticConfig, make_sample
from cheers_pl.data.tasks import CAPTION_QUESTION, TEXT_CAPTION_PROMPT
from cheers_pl.data.text_tokenizer import save_text_tokenizer, train_text_tokenizer
from cheers_pl.data.webdataset import write_shard

TOKENIZER_CORPUS_SAMPLES = 3000


def _write(job: tuple[str, int, int, SyntheticConfig, str]) -> int:
    split, start, stop, syn, path = job
    return write_shard((make_sample(i, split, syn) for i in range(start, stop)), path)


def _corpus(syn: SyntheticConfig, num: int) -> list[str]:
    """Texts the tiny tokenizer is trained on: captions, questions and answers of training scenes."""
    texts = [CAPTION_QUESTION, TEXT_CAPTION_PROMPT, "user\n", "assistant\n"]
    for i in range(num):  # the first `num` training scenes
        meta = make_sample(i, "train", syn)["json"]
        texts += meta["captions"]
        texts += [f"{q['question']} {q['answer']}" for q in meta["qa"]]
    return texts


def write_all(cfg: DataConfig, workers: int = 2) -> dict:
    """Writes every split's shards, the tokenizer and `manifest.json` under `cfg.shard_dir`; returns the manifest."""
    out = Path(cfg.shard_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs, manifest_splits = [], {}
    for split in SPLITS:
        n = cfg.num_samples.get(split, 0)
        for old in out.glob(f"{split}-*.tar"):
            old.unlink()
        names = []
        for shard, start in enumerate(range(0, n, cfg.samples_per_shard)):
            name = f"{split}-{shard:06d}.tar"
            names.append(name)
            jobs.append((split, start, min(n, start + cfg.samples_per_shard), cfg.synthetic, str(out / name)))
        manifest_splits[split] = {"num_samples": n, "shards": names}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        written = list(pool.map(_write, jobs))
    assert sum(written) == sum(cfg.num_samples.values()), "shard writer lost samples"
    corpus = _corpus(cfg.synthetic, min(TOKENIZER_CORPUS_SAMPLES, max(1, cfg.num_samples.get("train", 0))))
    tokenizer = train_text_tokenizer(corpus, cfg.text_tokenizer_vocab_size)
    save_text_tokenizer(tokenizer, out / "tokenizer")
    manifest = {
        "generator": "cheers_pl.data.synthetic",
        "seed": cfg.synthetic.seed,
        "synthetic": dataclasses.asdict(cfg.synthetic),
        "samples_per_shard": cfg.samples_per_shard,
        "splits": manifest_splits,
        "tokenizer": {"path": "tokenizer", "vocab_size": len(tokenizer)},
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
