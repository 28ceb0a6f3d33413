"""A tiny random model for tests: its zero-initialised layers (adaLN, flow output, HFI gate) perturbed so every path
carries signal, wrapped in a pipeline with a small trained text tokenizer."""

from pathlib import Path

import torch

from cheers_pl.data.text_tokenizer import train_text_tokenizer
from cheers_pl.model.cheers import CheersConfig, CheersModel
from cheers_pl.pipeline import CheersPipeline

# the committed tiny tokenizer (`make tokenizer-checkpoint`), which `make demo` starts from, and the overrides that
# start a stage from it with its own text tokenizer
TINY_TOKENIZER = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny_tokenizer"
FROM_TINY_TOKENIZER = [f"stage.init_from={TINY_TOKENIZER}", f"data.text_tokenizer={TINY_TOKENIZER / 'tokenizer'}"]

TEXTS = ["a red circle left of a blue square", "how many shapes are there? two", "what colour is it? green"] * 10


def perturbed_pipeline(seed: int = 0, cfg: CheersConfig | None = None, llm_noise: float = 0.0) -> CheersPipeline:
    """`llm_noise` > 0 adds noise to the LLM layers so that greedy decoding depends on the context."""
    torch.manual_seed(seed)
    text_tokenizer = train_text_tokenizer(TEXTS, vocab_size=300)
    model = CheersModel(cfg or CheersConfig(), vocab_size=len(text_tokenizer))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0.0, 0.05)
        if llm_noise:
            for p in model.llm.hf.model.layers.parameters():
                p.add_(torch.randn_like(p) * llm_noise)
    return CheersPipeline(model, text_tokenizer)
