"""Compositional (GenEval-style) callback: logged keys and values with oracle / blank fake stages, protocol, errors."""

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader

from cheers_pl.callbacks.compositional import CompositionalCallback, CompositionalConfig
from cheers_pl.data.synthetic import render
from cheers_pl.data.synthetic_scene import SyntheticConfig
from cheers_pl.eval.geneval import CATEGORIES, ground_truth_scene, make_prompts, prompts_hash, save_prompts
from tests.callbacks._generation_fakes import FakeGeneration, make_batch, make_trainer


class RenderingStage(LightningModule):
    """Generates ground-truth renders of the prompts (`oracle`) or blank backgrounds."""

    def __init__(self, oracle: bool) -> None:
        super().__init__()
        self.oracle = oracle
        self.cfg = SyntheticConfig()
        self.by_text = {p.text: p for p in make_prompts(self.cfg, 16, seed=0)}
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[dict] = []

    def validation_step(self, batch: object, batch_idx: int) -> None:
        return None

    def generate_images(self, prompts: list[str], seed: int = 0, **sampling: object) -> FakeGeneration:
        self.calls.append({"prompts": list(prompts), "seed": seed, **sampling})
        rng = np.random.default_rng(seed)
        size = self.cfg.image_size
        images = [
            render(ground_truth_scene(self.by_text[t], self.cfg, rng), self.cfg)
            if self.oracle
            else np.full((size, size, 3), 240, np.uint8)
            for t in prompts
        ]
        images_B3HW = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return FakeGeneration(images=images_B3HW, gates=None, grid_hw=(1, 1))


def _validate(tmp_path, stage: RenderingStage, cfg: CompositionalConfig, runs: int = 1) -> dict:
    batch = make_batch(torch.zeros(2, 3, 8, 8), [0, 1], [None, "x"])
    loader = DataLoader([batch], batch_size=None, collate_fn=lambda x: x)
    trainer = make_trainer(tmp_path, [CompositionalCallback(cfg)])
    for _ in range(runs):
        trainer.validate(stage, dataloaders=loader, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_oracle_renders_score_one_on_every_key(tmp_path) -> None:
    stage = RenderingStage(oracle=True)
    metrics = _validate(tmp_path, stage, CompositionalConfig(per_category=3, batch_size=5, num_steps=3))
    expected = {f"val/geneval_{c}" for c in (*CATEGORIES, "overall", "held_out", "in_distribution")}
    assert set(metrics) == expected and all(v == 1.0 for v in metrics.values())
    assert [c["seed"] for c in stage.calls] == [0, 1, 2, 3]  # 18 prompts in chunks of 5
    assert all(c["num_steps"] == 3 and c["guidance_scale"] is None for c in stage.calls)


def test_blank_images_score_zero_and_protocol_is_kept(tmp_path) -> None:
    stage = RenderingStage(oracle=False)
    callback_cfg = CompositionalConfig(per_category=2, images_per_prompt=2, seed=1, guidance_scale=2.0)
    callback = CompositionalCallback(callback_cfg)
    batch = make_batch(torch.zeros(1, 3, 8, 8), [1], ["x"])
    trainer = make_trainer(tmp_path, [callback])
    trainer.validate(stage, dataloaders=DataLoader([batch], batch_size=None, collate_fn=lambda x: x), verbose=False)
    assert float(trainer.callback_metrics["val/geneval_overall"]) == 0.0
    assert all(float(trainer.callback_metrics[f"val/geneval_{c}"]) == 0.0 for c in CATEGORIES)
    proto = callback.last_result["protocol"]
    assert proto["num_images"] == 24 and proto["images_per_prompt"] == 2 and proto["seeds"] == [1]
    assert proto["guidance_scale"] == 2.0 and proto["prompts_hash"] == prompts_hash(callback.prompts)
    assert callback.last_result["counts"]["colors"] == [0, 4]


def test_prompts_file_and_schedule(tmp_path) -> None:
    prompts = make_prompts(SyntheticConfig(), 1, seed=0)
    save_prompts(prompts, tmp_path / "p.jsonl")
    stage = RenderingStage(oracle=True)
    cfg = CompositionalConfig(every_n_val=2, prompts_file=str(tmp_path / "p.jsonl"), batch_size=64)
    _validate(tmp_path, stage, cfg, runs=3)
    assert [c["prompts"] for c in stage.calls] == [[p.text for p in prompts]] * 2  # runs 1 and 3


@pytest.mark.parametrize(
    "kwargs, key",
    [({"per_category": 0}, "per_category"), ({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed")],
)
def test_config_errors_name_the_field(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"callbacks.compositional.*{key}"):
        CompositionalConfig(**kwargs)


def test_missing_prompts_file_names_the_key(tmp_path) -> None:
    with pytest.raises(ValueError, match="callbacks.compositional.prompts_file"):
        CompositionalCallback(CompositionalConfig(prompts_file=str(tmp_path / "none.jsonl")))
