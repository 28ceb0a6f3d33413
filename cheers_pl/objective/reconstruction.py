"""Objectives of the `tokenizer` stage's reconstruction terms: the VAE's L1 + KL (+ LPIPS) and the pixel decoder's.

The pixel decoder D learns the CLEAN image from `D(z_t)`: a fraction `clean_prob` of the images is decoded from the
clean latent (t = 1, the understanding input, whose fidelity PSNR measures) and the rest from `z_t` at
t ~ U(t_min, 1) (what D sees during generation); the noisy latent comes from the flow path of
`cheers_pl.objective.flow_matching`. Pure functions over tensors (R3); the stage runs the networks.

Shape legend: B batch, H/W image side.

References:
    Cheers, arXiv 2603.12793, §3.1; Kingma & Welling, "Auto-Encoding Variational Bayes" (KL term); Zhang et al.,
    "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric" (LPIPS), CVPR 2018.
"""

import torch
import torch.nn.functional as F
from torch import nn

DECODER_LOSSES = ("l1", "mse")
LPIPS_NETS = ("vgg", "alex", "squeeze")


def vae_losses(recon_B3HW: torch.Tensor, images_B3HW: torch.Tensor, kl_B: torch.Tensor, latent_numel: int) -> dict:
    """`vae_l1` (reconstruction of a posterior sample) and `vae_kl` (mean KL per latent element)."""
    return {"vae_l1": F.l1_loss(recon_B3HW, images_B3HW), "vae_kl": kl_B.mean() / latent_numel}


def decoder_times(
    batch: int, clean_prob: float, t_min: float, generator: torch.Generator | None = None, device: torch.device = None
) -> torch.Tensor:
    """Flow times of D's inputs: 1 with probability `clean_prob`, else U(t_min, 1)."""
    u = torch.rand(2, batch, generator=generator, device=device)
    return torch.where(u[0] < clean_prob, torch.ones_like(u[1]), t_min + (1 - t_min) * u[1])


def decoder_loss(decoded_B3HW: torch.Tensor, images_B3HW: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Pixel loss of D's output against the clean image: "l1" (sharper, the default) or "mse"."""
    if kind not in DECODER_LOSSES:
        raise ValueError(f"decoder loss {kind!r} is not one of {DECODER_LOSSES}")
    return (F.l1_loss if kind == "l1" else F.mse_loss)(decoded_B3HW, images_B3HW)


def build_lpips(path: str, net: str) -> nn.Module:
    """torchmetrics' LPIPS network with every weight from the local file `path` (built random: nothing downloads).

    Raises:
        ValueError: naming `stage.lpips_weights` when the file is not an LPIPS-`net` state dict.
    """
    from torchmetrics.functional.image.lpips import _LPIPS

    module = _LPIPS(pretrained=False, net=net, pnet_rand=True)
    try:
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError) as err:
        raise ValueError(f"stage.lpips_weights={path!r}: not an LPIPS-{net} state dict ({err})") from err
    return module.requires_grad_(False).eval()
