"""The ablation experiments compose and differ from their base only in the ablated values (conf/experiment)."""

import json
from dataclasses import asdict

import pytest

from cheers_pl.config import compose


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


ABLATIONS = {
    "ablate_hfi_off": {"model.flow_head.injection": "off"},
    "ablate_compression_1x": {
        "model.vision.compression": 1,
        "model.flow_head.shuffle_factor": 1,  # interpolated from the compression
        "data.num_image_tokens": 64,
        "data.max_seq_len": 192,
    },
    "ablate_und_only": {"data.task_weights.generation": 0.0},
    "ablate_latents": {
        "model.vision.encoder_input": "latents",
        # the new latent embedding trains (a random frozen one made the arm unfair)
        "stage.trainable": [
            "model.vision.compressor.*",
            "model.vision.latent_embed.*",
            "model.llm.*",
            "model.flow_head.*",
        ],
    },
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_differs_from_base_only_in_the_ablated_values(name: str) -> None:
    base = _flat(asdict(compose("ablate_base")))
    variant = _flat(asdict(compose(name)))
    diff = {k: variant[k] for k in variant if variant[k] != base.get(k) and k != "name"}
    assert diff == ABLATIONS[name]


def test_table_reports_mean_spread_and_whether_the_difference_exceeds_it(monkeypatch, tmp_path) -> None:
    from cheers_pl import ablate

    scores = {  # (arm, seed) -> understanding overall
        ("ablate_base", 0): 0.50, ("ablate_base", 1): 0.54, ("ablate_und_only", 0): 0.70, ("ablate_und_only", 1): 0.74,
    }  # fmt: skip

    def fake(arm: str, seed: int, args) -> dict:
        und = {"overall": scores[(arm, seed)], "color": 0.5, "shape": 0.5 + 0.1 * seed}
        return {"train": {"steps": 1}, "report": {"understanding": {"scores": und}}, "batch_size": 4}

    monkeypatch.setattr(ablate, "_train_and_evaluate", fake)
    ablate.run(ablate.AblateArgs(names=["joint"], seeds=[0, 1], out_dir=str(tmp_path)))
    rows = {r["metric"]: r for r in json.loads((tmp_path / "ablations.json").read_text())["rows"]}
    overall = rows["understanding/overall"]
    assert overall["base"]["mean"] == pytest.approx(0.52) and overall["base"]["spread"] == pytest.approx(0.04)
    assert overall["shown"] is True  # Δ 0.2 > spread 0.04
    assert rows["understanding/shape"]["shown"] is False  # both arms 0.55 ± 0.05: Δ 0 within the spread
    table = (tmp_path / "ablations.md").read_text()
    assert "0.520 ± 0.020" in table and "| yes |" in table and "no (within spread)" in table
