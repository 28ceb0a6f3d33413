"""Tests for cheers_pl.strategies: FSDP names build the block-class auto-wrap (and checkpointing) policy."""

import lightning as L
import torch

from cheers_pl.config import compose
from cheers_pl.model.cheers import CheersConfig
from cheers_pl.model.flow_head import FlowHead
from cheers_pl.model.llm import LLM
from cheers_pl.model.vision_tokenizer import VisionTokenizer
from cheers_pl.strategies import CheersFSDPStrategy, block_classes, build_strategy, trainer_kwargs


def test_fsdp_names_build_the_block_policy_and_others_pass_through() -> None:
    plain = build_strategy(compose("tiny_generation", ["trainer=fsdp"]).trainer.strategy)
    ac = build_strategy(
        compose("tiny_generation", ["trainer=fsdp", "trainer.strategy=cheers_fsdp_ac"]).trainer.strategy
    )
    assert isinstance(plain, CheersFSDPStrategy) and isinstance(ac, CheersFSDPStrategy)
    assert plain.kwargs["use_orig_params"] and not plain._activation_checkpointing_kwargs
    assert plain.kwargs["auto_wrap_policy"]._module_classes == block_classes()
    assert ac._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == block_classes()
    assert trainer_kwargs(compose("tiny_generation", ["trainer=ddp"]).trainer.kwargs())["strategy"] == (
        "ddp_find_unused_parameters_true"
    )


def test_wrap_units_are_exactly_the_llm_vit_and_dit_blocks() -> None:
    cfg = CheersConfig()
    with torch.device("meta"):
        parts = [VisionTokenizer(cfg.vision), LLM(cfg.llm), FlowHead(cfg.flow_head)]
    classes = tuple(block_classes())
    units = [m for part in parts for m in part.modules() if isinstance(m, classes)]
    expected = cfg.llm.num_layers + cfg.vision.encoder.num_layers + cfg.flow_head.stage1_depth
    assert len(units) == expected + cfg.flow_head.stage2_depth


def test_registered_name_works_as_a_plain_trainer_string() -> None:
    trainer = L.Trainer(strategy="cheers_fsdp", accelerator="cpu", devices=1, logger=False)
    assert isinstance(trainer.strategy, CheersFSDPStrategy)
