"""VQA callback: normalised exact match per category, collection rules, logged keys with fake stages, errors."""

import pytest
import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader

from cheers_pl.callbacks.vqa import VQACallback, VQAConfig
from tests.callbacks._generation_fakes import make_batch, make_trainer

ROWS = [  # (task, question, answer, category)
    (0, "how many objects are there?", "three", "count"),
    (0, "what color is the circle?", "red", "color"),
    (0, "what shape is the red object?", "square", "shape"),
    (0, "Describe the image.", "one object: a red circle", "caption"),
    (1, None, None, None),
    (0, "is the circle above the square?", "yes", "relation"),
    (0, "what texture does the circle have?", "striped", "texture"),
    (0, "what digit is written on the square?", "7", "digit"),
    (0, "how many circles are there?", "two", "count"),
]


class AnsweringStage(LightningModule):
    """Answers from a question -> answer table (`oracle`), with noise in case and punctuation, or wrongly."""

    def __init__(self, table: dict[str, str], oracle: bool = True) -> None:
        super().__init__()
        self.table, self.oracle = table, oracle
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[int, int]] = []

    def validation_step(self, batch: object, batch_idx: int) -> None:
        return None

    def answer(self, images: torch.Tensor, questions: list[str], max_new_tokens: int = 8) -> list[str]:
        assert images.shape[0] == len(questions) and images.ndim == 4
        self.calls.append((len(questions), max_new_tokens))
        if not self.oracle:
            return ["banana"] * len(questions)
        return [f" {self.table[q].upper()}. " if i % 2 else self.table[q] for i, q in enumerate(questions)]


def _loader(num_batches: int = 2) -> DataLoader:
    batches = []
    for b in range(num_batches):
        batch = make_batch(torch.rand(len(ROWS), 3, 8, 8), [r[0] for r in ROWS], ["c" if r[0] else None for r in ROWS])
        for meta, (task, q, a, c) in zip(batch.meta, ROWS, strict=True):
            if task == 0:
                meta.clear()
                meta.update(question=f"{q} #{b}", answer=a, category=c)
        batches.append(batch)
    return DataLoader(batches, batch_size=None, collate_fn=lambda x: x)


def _table() -> dict[str, str]:
    return {f"{q} #{b}": a for b in range(3) for t, q, a, _ in ROWS if t == 0}


def _validate(tmp_path, stage: AnsweringStage, cfg: VQAConfig, runs: int = 1) -> dict[str, float]:
    trainer = make_trainer(tmp_path, [VQACallback(cfg)])
    for _ in range(runs):
        trainer.validate(stage, dataloaders=_loader(), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_oracle_scores_one_and_captions_and_generation_rows_are_excluded(tmp_path) -> None:
    stage = AnsweringStage(_table())
    metrics = _validate(tmp_path, stage, VQAConfig(batch_size=5, max_new_tokens=3))
    expected = {f"val/vqa_{c}" for c in ("count", "color", "shape", "relation", "texture", "digit", "overall")}
    assert set(metrics) == expected and all(v == 1.0 for v in metrics.values())
    assert stage.calls == [(5, 3), (5, 3), (4, 3)]  # 7 questions per batch, captions and task 1 skipped


def test_wrong_answers_score_zero_and_max_examples_caps_collection(tmp_path) -> None:
    stage = AnsweringStage(_table(), oracle=False)
    metrics = _validate(tmp_path, stage, VQAConfig(max_examples=3))
    assert sum(n for n, _ in stage.calls) == 3
    assert metrics == {"val/vqa_count": 0.0, "val/vqa_color": 0.0, "val/vqa_shape": 0.0, "val/vqa_overall": 0.0}


def test_partial_accuracy_per_category(tmp_path) -> None:
    table = _table()
    table["how many circles are there? #0"] = "three"  # one of four count questions answered wrongly
    metrics = _validate(tmp_path, AnsweringStage(table), VQAConfig())
    assert metrics["val/vqa_count"] == 0.75 and metrics["val/vqa_color"] == 1.0
    assert metrics["val/vqa_overall"] == pytest.approx(13 / 14)


def test_schedule_and_no_questions_warning(tmp_path) -> None:
    stage = AnsweringStage(_table())
    _validate(tmp_path, stage, VQAConfig(every_n_val=2, batch_size=64), runs=3)
    assert len(stage.calls) == 2  # runs 1 and 3
    batch = make_batch(torch.zeros(2, 3, 8, 8), [1, 1], ["a", "b"])
    trainer = make_trainer(tmp_path, [VQACallback(VQAConfig())])
    with pytest.warns(UserWarning, match="val/vqa: skipped"):
        trainer.validate(stage, dataloaders=DataLoader([batch], batch_size=None, collate_fn=lambda x: x))


@pytest.mark.parametrize("key", ["every_n_val", "max_examples", "max_new_tokens", "batch_size"])
def test_config_errors_name_the_field(key: str) -> None:
    with pytest.raises(ValueError, match=f"callbacks.vqa.{key}"):
        VQAConfig(**{key: 0})
