"""Benchmark 5, scaling: cost of one forward + backward of the whole model vs image resolution and sequence length.

A synthetic generation-like row: P random text tokens then one image block of N tokens, flow time t ~ U(0, 1); the
loss is the velocity MSE plus the next-token cross-entropy on the text. Resolution changes only the semantic
encoder's `image_size` (the VAE is convolutional; N = (H / patch / f)²); sequence length changes only P.

Shape legend: B batch, L = P + N, N image tokens.
"""

from dataclasses import replace

import torch
import torch.nn.functional as F

from cheers_pl.bench.build import build_model
from cheers_pl.bench.measure import activation_memory, count_flops, module_tensors, timed
from cheers_pl.config import ExperimentConfig
from cheers_pl.model.cheers import CheersConfig, CheersModel, CheersOutput
from cheers_pl.objective.flow_matching import training_losses


def _loss_fn(model: CheersModel, batch: int, prompt_len: int, device: str):
    """A closure: forward of a B×(P+N) synthetic row batch → velocity MSE + text CE."""
    n, side = model.num_image_tokens, model.vision.encoder.image_size
    L = prompt_len + n
    vocab = model.llm.vocab_size
    input_ids_BL = torch.randint(0, vocab, (batch, L), device=device)
    block_ids_BL = torch.zeros(batch, L, dtype=torch.long, device=device)
    block_ids_BL[:, prompt_len:] = 1
    pad_mask_BL = torch.ones(batch, L, dtype=torch.bool, device=device)
    images = torch.rand(batch, 3, side, side, device=device) * 2 - 1
    t_B = torch.rand(batch, device=device)

    def network(z_t: torch.Tensor, t: torch.Tensor) -> CheersOutput:
        return model(input_ids_BL, pad_mask_BL, block_ids_BL, z_t, t)

    def loss() -> torch.Tensor:
        flow = training_losses(network, model.vision.encode(images), t_B)
        logits = flow.output.logits
        text = F.cross_entropy(logits[:, : prompt_len - 1].flatten(0, 1), input_ids_BL[:, 1:prompt_len].flatten())
        return flow.loss + text

    return loss


def _measure(model: CheersModel, batch: int, prompt_len: int, repeats: int, warmup: int, device: str) -> dict:
    loss = _loss_fn(model, batch, prompt_len, device)

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        loss().backward()

    t = timed(fwd_bwd, repeats, warmup, device)
    flops = count_flops(fwd_bwd)
    mem = activation_memory(loss, device, exclude=module_tensors(model))
    model.zero_grad(set_to_none=True)
    return {
        "step_s": t["median_s"],
        "flops": flops,
        "activation_bytes": mem["bytes"],
        "memory_method": mem["method"],
        "timing": t,
    }


def bench_scaling(
    cfg: ExperimentConfig,
    resolutions: tuple[int, ...] = (64, 128, 256),
    prompt_lens: tuple[int, ...] = (16, 64, 256),
    batch: int = 2,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
) -> dict:
    """Step cost vs resolution (prompt fixed at the first `prompt_lens`) and vs prompt length (first resolution).

    Returns:
        `{"resolution": [...], "sequence": [...]}`; each row has its time relative to the first row.
    """
    model_cfg: CheersConfig = cfg.model
    by_res = []
    for side in resolutions:
        enc = replace(model_cfg.vision.encoder, image_size=side)
        res_cfg = replace(model_cfg, vision=replace(model_cfg.vision, encoder=enc))
        model = build_model(cfg, res_cfg, device).train()
        row = {
            "resolution": side,
            "image_tokens": model.num_image_tokens,
            "seq_len": prompt_lens[0] + model.num_image_tokens,
        }
        by_res.append({**row, **_measure(model, batch, prompt_lens[0], repeats, warmup, device)})
        if side == resolutions[0]:
            base_model = model
    by_seq = []
    for p in prompt_lens:
        row = {"prompt_len": p, "image_tokens": base_model.num_image_tokens, "seq_len": p + base_model.num_image_tokens}
        by_seq.append({**row, **_measure(base_model, batch, p, repeats, warmup, device)})
    for rows in (by_res, by_seq):
        for r in rows:
            r["time_vs_first"] = r["step_s"] / rows[0]["step_s"]
            r["flops_vs_first"] = r["flops"] / rows[0]["flops"]
    return {"batch": batch, "resolution": by_res, "sequence": by_seq}
