"""The ablation experiments compose and differ from their base only in the ablated values (conf/experiment)."""

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
    "ablate_latents": {"model.vision.encoder_input": "latents"},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_differs_from_base_only_in_the_ablated_values(name: str) -> None:
    base = _flat(asdict(compose("ablate_base")))
    variant = _flat(asdict(compose(name)))
    diff = {k: variant[k] for k in variant if variant[k] != base.get(k) and k != "name"}
    assert diff == ABLATIONS[name]
