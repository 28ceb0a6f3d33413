"""CLIP-score callback: the contrastive-tower path and a tiny local `transformers` CLIP, same torchmetrics formula."""

import pytest
import torch
import torch.nn.functional as F

from cheers_pl.callbacks.clip_score import CLIPScoreCallback, CLIPScoreConfig
from cheers_pl.data.processing import to_uint8
from cheers_pl.eval.clip_score import ContrastiveCLIPScore, local_clip_score
from tests.callbacks._generation_fakes import FakeStage, make_data, make_trainer


def _validate(tmp_path, stage: FakeStage, loader, **cfg) -> float:
    trainer = make_trainer(tmp_path, [CLIPScoreCallback(CLIPScoreConfig(batch_size=5, **cfg))])
    trainer.validate(stage, dataloaders=loader, verbose=False)
    return float(trainer.callback_metrics["val/clip_score"])


def test_contrastive_score_is_100_mean_cosine(tmp_path) -> None:
    loader, lookup = make_data()
    stage = FakeStage(lookup, shift=0.3)
    score = _validate(tmp_path, stage, loader, num_images=12)
    prompts = [p for call in stage.calls for p in call["prompts"]]
    assert len(prompts) == 12 and [c["seed"] for c in stage.calls] == [0, 1, 2]
    real = torch.stack([lookup[p] for p in prompts])
    cos = F.cosine_similarity(stage.semantic_features(real + 0.3), stage.semantic_features(real), dim=-1)
    assert 0 < score < 100
    assert score == pytest.approx(100 * cos.mean().item(), abs=1e-4)


def test_contrastive_score_of_perfect_match_is_100(tmp_path) -> None:
    loader, lookup = make_data(num_batches=2)
    assert _validate(tmp_path, FakeStage(lookup), loader) == pytest.approx(100.0, abs=1e-4)


def test_contrastive_metric_clamps_the_mean_not_each_pair() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])  # cosines 1, -1, -1 -> mean -1/3
    metric = ContrastiveCLIPScore(lambda images, texts: (emb, txt))
    metric.update(torch.zeros(3, 3, 4, 4), ["a", "b", "c"])
    assert metric.compute().item() == 0.0
    metric.reset()
    metric.update(torch.zeros(2, 3, 4, 4), ["a", "b"])  # cosines 1, -1 -> mean 0 (per-pair clamp would give 50)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)


def test_missing_text_tower_error_names_the_config_key(tmp_path) -> None:
    loader, lookup = make_data(num_batches=1)
    stage = FakeStage(lookup)
    stage.has_text_tower = False
    with pytest.raises(ValueError, match="callbacks.clip_score.model"):
        _validate(tmp_path, stage, loader)


def test_missing_local_clip_dir_and_bad_config_raise() -> None:
    with pytest.raises(ValueError, match="callbacks.clip_score.model.*'/nonexistent/clip'"):
        CLIPScoreCallback(CLIPScoreConfig(model="/nonexistent/clip"))
    with pytest.raises(ValueError, match="callbacks.clip_score.num_images"):
        CLIPScoreConfig(num_images=0)


def _save_tiny_clip(path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())  # a byte-level BPE vocab without merges: one token per character
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config=text
        | {
            "vocab_size": len(vocab),
            "max_position_embeddings": 32,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config=text | {"image_size": 16, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)


def test_local_clip_matches_direct_transformers_computation(tmp_path) -> None:
    from transformers import CLIPModel, CLIPProcessor

    clip_dir = tmp_path / "clip"
    _save_tiny_clip(clip_dir)
    loader, lookup = make_data(num_batches=2)
    stage = FakeStage(lookup, shift=0.0)
    prompts = list(lookup)[:6]
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        images = list(to_uint8(torch.stack([lookup[p] for p in prompts])))
        img = model.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
        tok = processor(text=prompts, return_tensors="pt", padding=True)
        txt = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    mean_cos = F.cosine_similarity(img.pooler_output, txt.pooler_output, dim=-1).mean().item()
    if mean_cos < 0:  # random weights: flip the text projection so that the clamp at 0 is not what is compared
        model.text_projection.weight.data.neg_()
        model.save_pretrained(clip_dir)
        mean_cos = -mean_cos
    assert mean_cos > 0.01

    score = _validate(tmp_path, stage, loader, num_images=6, model=str(clip_dir))
    assert score == pytest.approx(100 * mean_cos, abs=1e-3)
    metric = local_clip_score(str(clip_dir))
    assert sum(p.numel() for p in metric.parameters()) == sum(p.numel() for p in model.parameters())
