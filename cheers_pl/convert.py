"""`convert-official`: the released Cheers checkpoint (`ai9stars/Cheers` layout) → our exported pipeline dir (R12).

`python -m cheers_pl convert-official src=DIR dst=DIR` reads `config.json` and `model.safetensors` (or its sharded
index) and writes `cheers_config.json` (the official preset: every released-vs-native difference set to the
released value), sharded safetensors in the dtype of the release (bf16, no fp32 copy), `tokenizer/` (the Qwen2.5
files of `src`, or `tokenizer=DIR`, with the Cheers special tokens; for Qwen2.5 at ids 151665–151669 as in the
release) and `pipeline.json` (the released sampler and chat template). `CheersPipeline.from_pretrained(dst)` loads
it. `check_only=true` needs only `config.json` and the index: it accounts for every name on the meta device.
"""

from dataclasses import dataclass
from pathlib import Path

from cheers_pl.data.processing import ProcessingConfig
from cheers_pl.data.text_tokenizer import CHEERS_SPECIAL_TOKENS, load_text_tokenizer, save_text_tokenizer
from cheers_pl.model.weights import TOKENIZER_DIR, save_weights
from cheers_pl.official.config import official_sampling
from cheers_pl.official.conversion import check_index, convert
from cheers_pl.pipeline import write_settings


@dataclass
class ConvertArgs:
    """`python -m cheers_pl convert-official src=DIR dst=DIR [check_only=true]`."""

    src: str = "???"
    dst: str | None = None
    check_only: bool = False
    tokenizer: str | None = None  # a tokenizer directory (default: src, which holds the release's Qwen2.5 files)
    max_shard_size: int = 2_000_000_000  # bytes per safetensors shard


def run(args: ConvertArgs) -> dict:
    """Checks (`check_only`) or converts `src` into `dst`; returns a report."""
    src = Path(args.src)
    if not src.is_dir():
        raise ValueError(f"src={args.src!r}: not a directory")
    if args.check_only:
        return {"src": str(src), **check_index(src)}
    if args.dst is None:
        raise ValueError("dst=DIR is required unless check_only=true")
    if args.max_shard_size < 1:
        raise ValueError(f"max_shard_size must be >= 1 byte, got {args.max_shard_size}")
    text_tokenizer = load_text_tokenizer(args.tokenizer or str(src))
    cfg, state, plan = convert(src)
    if len(text_tokenizer) > cfg.llm.vocab_size:
        raise ValueError(
            f"tokenizer has {len(text_tokenizer)} tokens but the checkpoint's embedding {cfg.llm.vocab_size} rows"
        )
    dst = save_weights(state, cfg, args.dst, max_shard_size=args.max_shard_size)
    save_text_tokenizer(text_tokenizer, dst / TOKENIZER_DIR)
    write_settings(dst, official_sampling(), ProcessingConfig.official())
    summary = plan.summary(len(plan.mapped) + len(plan.dropped))
    return {
        "src": str(src),
        "dst": str(dst),
        **summary,
        "lm_head": "tied (equal to the embedding)" if cfg.llm.tie_word_embeddings else "untied",
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in state.values()}),
        "special_token_ids": {t: text_tokenizer.convert_tokens_to_ids(t) for t in CHEERS_SPECIAL_TOKENS},
        "files": sorted(p.name for p in dst.iterdir()),
    }
