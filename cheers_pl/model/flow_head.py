"""Cascaded flow-matching (CFM) head with gated high-frequency injection (HFI).

Stage 1 (semantics) runs adaLN-Zero DiT blocks at LLM width on the compressed h×w grid of LLM hidden states and
projects each token to f²·sem_dim channels, which a pixel-shuffle (`projectors.shuffle_tokens`, the inverse of the
understanding path's unshuffle) turns into the H×W = (h·f)×(w·f) semantic grid Z'.
HFI adds the caller's detail residual S (the semantic encoder's patch embedding of the decoded current latent):
`Z' ← LayerNorm(Z' + g(Z')·S)`. Stage 2 (details) runs DiT blocks at semantic width on H×W and predicts the
velocity `v = x1 − x0` in the normalised VAE latent space (flow convention: t = 1 is data).

Injection modes (an ablation is a config value, R14): `gated` learns g (MLP sem→sem→SiLU→1, one unbounded scalar
per token, last layer zero-initialised); `constant` uses g ≡ `constant_gate`; `off` drops the term but keeps the
LayerNorm, i.e. it is the same computation with g ≡ 0, so `gated` at initialisation equals `off` exactly. Only
`gated` owns gate parameters (no unused parameters under DDP), so its checkpoints carry extra `hfi.gate.*` keys.

Zero-initialisation: every adaLN modulation and the stage-2 output projection start at zero (DiT); the stage-1
output projection does not, since a zero Z' would leave stage 2 without input and stall the gradient path.

Two options that are not in Cheers, off in every preset, hand the head directly what the paper's head gets only
through the LLM's image positions and through D (diagnostics of the tiny preset's generation, README):
`prompt_condition="pooled"` adds a linear map of the pooled prompt (`layers.masked_mean` of the LLM's final hidden
states over the prompt's text tokens) to each stage's t embedding, and `latent_skip` adds a linear map of z_t itself
to Z' before HFI. Both maps start at zero, so each option starts as the paper's head.

Where the released Cheers code computes differently, the difference is a config value whose default is the native
choice (R14; `cheers_pl.official.config` sets the released ones): `time_scale` (1000·t vs raw t in the sinusoid),
`stage2_positions` (RoPE positions 0..M−1 vs 0..M/2−1 twice), `norm_weights` (weighted RMSNorms in the DiT blocks),
`qkv_bias`, `modulation_dtype` (adaLN modulation in float32) and `hfi_norm_eps` (the HFI LayerNorm's eps).

Shape legend: `cheers_pl.model`; here h×w is the compressed grid of the N input tokens and H×W = (h·f)×(w·f) the
full grid of the M tokens, L the latent channels.

References:
    Cheers, arXiv 2603.12793, §3 (cascaded flow matching, gated HFI); Peebles & Xie, DiT, ICCV 2023.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from cheers_pl.model.layers import AdaLNZero, Attention, RMSNorm, RotaryEmbedding1D, SwiGLU, TimestepEmbedder
from cheers_pl.model.layers.adaln import modulate
from cheers_pl.model.projectors import shuffle_tokens
from cheers_pl.objective.flow_matching import PREDICTIONS

INJECTIONS = ("gated", "off", "constant")
PROMPT_CONDITIONS = ("none", "pooled")
ROPE_POSITIONS = ("raster", "half_twice")  # 0..M−1 | 0..M/2−1 twice (the released code's stage 2)
MODULATION_DTYPES = {"input": None, "float32": torch.float32}


@dataclass
class FlowHeadConfig:
    """Flow head widths and depths; defaults are the tiny preset, comments give the 1.5B preset."""

    llm_dim: int = 128  # full: 1536 (Qwen2.5-1.5B width)
    sem_dim: int = 128  # full: 1152 (SigLIP2 so400m width)
    latent_dim: int = 32  # full: 128 (32 VAE channels, 2×2-patchified)
    shuffle_factor: int = 2  # full: 2 (16×16 → 32×32)
    stage1_depth: int = 2  # full: 7
    stage1_heads: int = 4  # full: 12 (head dim 128)
    stage1_kv_heads: int = 2  # full: 2
    stage2_depth: int = 1  # full: 3
    stage2_heads: int = 2  # full: 16 (head dim 72)
    stage2_kv_heads: int = 1  # full: 2
    mlp_ratio: float = 4.0  # full: 4.0 → SwiGLU hidden 6144 / 4608; matches the §1.4 budget (stage 1 ≈ 348M)
    stage1_mlp_dim: int | None = None  # overrides llm_dim·mlp_ratio when set
    stage2_mlp_dim: int | None = None  # overrides sem_dim·mlp_ratio when set
    time_freq_dim: int = 256  # full: 256
    time_scale: float = 1000.0  # t is scaled by this inside the sinusoid (released checkpoint: 1, raw t)
    rope_theta: float = 10000.0
    stage2_positions: str = "raster"  # a ROPE_POSITIONS value (released checkpoint: "half_twice")
    qkv_bias: bool = True  # released checkpoint: False
    norm_weights: bool = False  # learnt RMSNorm weights in the DiT blocks and final layers (released: True)
    modulation_dtype: str = "input"  # "input" | "float32": dtype of the adaLN affine map (released: "float32")
    # what the final layer predicts: "velocity" v = x1 − x0 (the paper) or "data" x1, turned into the velocity
    # (x̂1 − z_t) / (1 − t) by the model (`cheers_pl.objective.flow_matching.velocity_from_prediction`)
    prediction: str = "velocity"
    injection: str = "gated"  # "gated" | "off" | "constant"
    constant_gate: float = 1.0  # g for injection="constant"
    # "none" (the paper: the head sees the prompt only through the LLM's hidden states at the image positions) or
    # "pooled": the mean of the LLM's final hidden states over the prompt's text tokens, mapped by a zero-initialised
    # linear layer per stage and added to that stage's t embedding (the pooled text vector of SD3 and FLUX). Not in
    # Cheers: a diagnostic of the prompt path that a researcher switches on (off in every preset)
    prompt_condition: str = "none"
    # True: a zero-initialised linear map of the current latent z_t (one token per position of the full grid) is added
    # to Z' before HFI, so the head sees z_t itself, as a plain DiT does. Not in Cheers (its head sees z_t only
    # through D and the semantic encoder): a diagnostic of the noise that D hides (off in every preset)
    latent_skip: bool = False
    norm_eps: float = 1e-6
    hfi_norm_eps: float = 1e-6  # eps of the HFI LayerNorm (released checkpoint: 1e-5, PyTorch's default)

    def __post_init__(self) -> None:
        for name in (
            "llm_dim",
            "sem_dim",
            "latent_dim",
            "shuffle_factor",
            "stage1_depth",
            "stage2_depth",
            "stage1_heads",
            "stage1_kv_heads",
            "stage2_heads",
            "stage2_kv_heads",
            "time_freq_dim",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"FlowHeadConfig.{name} must be positive, got {getattr(self, name)}")
        for stage, dim in (("stage1", self.llm_dim), ("stage2", self.sem_dim)):
            heads, kv_heads = getattr(self, f"{stage}_heads"), getattr(self, f"{stage}_kv_heads")
            if dim % heads != 0 or (dim // heads) % 2 != 0:
                raise ValueError(f"FlowHeadConfig.{stage}_heads={heads} must divide width {dim} into even head dims")
            if heads % kv_heads != 0:
                raise ValueError(f"FlowHeadConfig.{stage}_kv_heads={kv_heads} must divide {stage}_heads={heads}")
            mlp_dim = getattr(self, f"{stage}_mlp_dim")
            if mlp_dim is not None and mlp_dim <= 0:
                raise ValueError(f"FlowHeadConfig.{stage}_mlp_dim must be positive, got {mlp_dim}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"FlowHeadConfig.mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.injection not in INJECTIONS:
            hint = " (YAML reads a bare off/on as a boolean: quote it, e.g. 'model.flow_head.injection=\"off\"')"
            raise ValueError(
                f"FlowHeadConfig.injection must be one of {INJECTIONS}, got {self.injection!r}"
                + (hint if isinstance(self.injection, bool) else "")
            )
        if self.prompt_condition not in PROMPT_CONDITIONS:
            raise ValueError(
                f"FlowHeadConfig.prompt_condition must be one of {PROMPT_CONDITIONS}, got {self.prompt_condition!r}"
            )
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"FlowHeadConfig.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        for name in ("rope_theta", "norm_eps", "hfi_norm_eps", "time_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FlowHeadConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.stage2_positions not in ROPE_POSITIONS:
            raise ValueError(
                f"FlowHeadConfig.stage2_positions must be one of {ROPE_POSITIONS}, got {self.stage2_positions!r}"
            )
        if self.modulation_dtype not in MODULATION_DTYPES:
            raise ValueError(
                f"FlowHeadConfig.modulation_dtype must be one of {sorted(MODULATION_DTYPES)}, "
                f"got {self.modulation_dtype!r}"
            )

    def mlp_dim(self, stage: int) -> int:
        """SwiGLU hidden width of stage 1 or 2."""
        explicit, dim = (self.stage1_mlp_dim, self.llm_dim) if stage == 1 else (self.stage2_mlp_dim, self.sem_dim)
        return explicit if explicit is not None else int(dim * self.mlp_ratio)


class DiTBlock(nn.Module):
    """Pre-norm transformer block modulated by adaLN-Zero (shift/scale/gate for attention and MLP).

    With `norm_weights=False` the norms carry no weight of their own (adaLN supplies the per-channel scale); the
    released checkpoint has weighted RMSNorms. `modulation_dtype` is the dtype of the adaLN affine map (None: the
    activations').
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int,
        mlp_dim: int,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        norm_weights: bool = False,
        modulation_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim, eps, affine=norm_weights)
        self.attn = Attention(dim, num_heads, num_kv_heads, qkv_bias=qkv_bias)
        self.norm2 = RMSNorm(dim, eps, affine=norm_weights)
        self.mlp = SwiGLU(dim, mlp_dim)
        self.adaln = AdaLNZero(dim, dim, 6)
        self.modulation_dtype = modulation_dtype

    def forward(self, x_BNC: torch.Tensor, c_BC: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Returns B×N×C."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaln(c_BC)
        dtype = self.modulation_dtype
        x_BNC = x_BNC + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x_BNC), shift_a, scale_a, dtype), rope)
        return x_BNC + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x_BNC), shift_m, scale_m, dtype))


class FinalLayer(nn.Module):
    """adaLN-modulated norm followed by a linear projection to `out_dim` channels per token."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        eps: float = 1e-6,
        zero_init: bool = True,
        norm_weights: bool = False,
        modulation_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps, affine=norm_weights)
        self.adaln = AdaLNZero(dim, dim, 2)
        self.linear = nn.Linear(dim, out_dim)
        self.modulation_dtype = modulation_dtype
        if zero_init:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x_BNC: torch.Tensor, c_BC: torch.Tensor) -> torch.Tensor:
        """Returns B×N×out_dim."""
        shift, scale = self.adaln(c_BC)
        return self.linear(modulate(self.norm(x_BNC), shift, scale, self.modulation_dtype))


def rope_positions(num_tokens: int, mode: str) -> torch.Tensor:
    """Long RoPE positions: `raster` 0..N−1; `half_twice` 0..N/2−1 then 0..N/2−1 again (the released stage 2)."""
    if mode == "raster":
        return torch.arange(num_tokens)
    if mode != "half_twice" or num_tokens % 2:
        raise ValueError(
            f"rope positions mode={mode!r} for {num_tokens} tokens: use {ROPE_POSITIONS} (half_twice: N even)"
        )
    return torch.arange(num_tokens // 2).repeat(2)


class DiTStage(nn.Module):
    """A stack of DiT blocks sharing one 1-D RoPE (positions by `positions`, any grid), then a final layer."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        num_kv_heads: int,
        mlp_dim: int,
        out_dim: int,
        rope_theta: float,
        qkv_bias: bool,
        eps: float,
        zero_init_out: bool,
        positions: str = "raster",
        norm_weights: bool = False,
        modulation_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.positions = positions
        self.rope = RotaryEmbedding1D(dim // num_heads, rope_theta)
        self.blocks = nn.ModuleList(
            DiTBlock(dim, num_heads, num_kv_heads, mlp_dim, qkv_bias, eps, norm_weights, modulation_dtype)
            for _ in range(depth)
        )
        self.final = FinalLayer(dim, out_dim, eps, zero_init_out, norm_weights, modulation_dtype)

    def forward(self, x_BNC: torch.Tensor, c_BC: torch.Tensor) -> torch.Tensor:
        """Returns B×N×out_dim."""
        num_tokens = x_BNC.shape[1]
        positions = num_tokens if self.positions == "raster" else rope_positions(num_tokens, self.positions)
        rope = self.rope(positions, dtype=x_BNC.dtype)
        for block in self.blocks:
            x_BNC = block(x_BNC, c_BC, rope)
        return self.final(x_BNC, c_BC)


class HighFrequencyInjection(nn.Module):
    """`Z' ← LayerNorm(Z' + g(Z')·S)` with g learnt (`gated`), constant (`constant`) or zero (`off`)."""

    def __init__(self, dim: int, mode: str, constant_gate: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        if mode not in INJECTIONS:
            raise ValueError(f"HighFrequencyInjection mode must be one of {INJECTIONS}, got {mode!r}")
        self.mode = mode
        self.constant_gate = constant_gate
        self.gate = None
        if mode == "gated":
            self.gate = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
            nn.init.zeros_(self.gate[-1].weight)  # HFI starts switched off (g ≡ 0)
            nn.init.zeros_(self.gate[-1].bias)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, z_BMC: torch.Tensor, detail_BMC: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the injected grid B×M×C and the gate values B×M."""
        if self.mode == "off":
            return self.norm(z_BMC), z_BMC.new_zeros(z_BMC.shape[:2])
        if detail_BMC is None:
            raise ValueError(f"HighFrequencyInjection mode={self.mode!r} needs detail_BMC, got None")
        if self.gate is not None:
            g_BM = self.gate(z_BMC).squeeze(-1)
        else:
            g_BM = z_BMC.new_full(z_BMC.shape[:2], self.constant_gate)
        return self.norm(z_BMC + g_BM.unsqueeze(-1) * detail_BMC), g_BM


@contextlib.contextmanager
def hfi_balance(head: nn.Module | None) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Records, for every HFI call of `head` inside the block, the mean per-token norms of Z' ("z_norm") and of g·S
    ("gs_norm", 0 where S is absent) that enter the HFI LayerNorm, and the mean gate ("gate"), as detached scalars
    (no device sync per call). The list stays empty when `head` is None or has no `hfi` module."""
    records: list[dict[str, torch.Tensor]] = []
    hfi = getattr(head, "hfi", None)
    if not isinstance(hfi, nn.Module):
        yield records
        return

    def keep(_module: nn.Module, inputs: tuple, out: tuple) -> None:
        z_BMC, detail_BMC = inputs
        g_BM = out[1]
        injected_BMC = torch.zeros_like(z_BMC) if detail_BMC is None else g_BM.unsqueeze(-1) * detail_BMC
        norms = {"z_norm": z_BMC, "gs_norm": injected_BMC}
        records.append({**{k: v.detach().norm(dim=-1).mean() for k, v in norms.items()}, "gate": g_BM.detach().mean()})

    handle = hfi.register_forward_hook(keep)
    try:
        yield records
    finally:
        handle.remove()


class FlowHead(nn.Module):
    """Cascaded flow-matching head: LLM hidden states of a generation block → latent velocity."""

    def __init__(self, cfg: FlowHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        f2 = cfg.shuffle_factor**2
        common = dict(norm_weights=cfg.norm_weights, modulation_dtype=MODULATION_DTYPES[cfg.modulation_dtype])
        self.time_embed1 = TimestepEmbedder(cfg.llm_dim, cfg.time_freq_dim, cfg.time_scale)
        self.stage1 = DiTStage(
            cfg.llm_dim,
            cfg.stage1_depth,
            cfg.stage1_heads,
            cfg.stage1_kv_heads,
            cfg.mlp_dim(1),
            f2 * cfg.sem_dim,
            cfg.rope_theta,
            cfg.qkv_bias,
            cfg.norm_eps,
            zero_init_out=False,
            **common,
        )
        self.time_embed2 = TimestepEmbedder(cfg.sem_dim, cfg.time_freq_dim, cfg.time_scale)
        self.stage2 = DiTStage(
            cfg.sem_dim,
            cfg.stage2_depth,
            cfg.stage2_heads,
            cfg.stage2_kv_heads,
            cfg.mlp_dim(2),
            cfg.latent_dim,
            cfg.rope_theta,
            cfg.qkv_bias,
            cfg.norm_eps,
            zero_init_out=True,
            positions=cfg.stage2_positions,
            **common,
        )
        self.hfi = HighFrequencyInjection(cfg.sem_dim, cfg.injection, cfg.constant_gate, cfg.hfi_norm_eps)
        self.prompt_embed1 = self.prompt_embed2 = None
        if cfg.prompt_condition == "pooled":
            self.prompt_embed1 = nn.Linear(cfg.llm_dim, cfg.llm_dim)
            self.prompt_embed2 = nn.Linear(cfg.llm_dim, cfg.sem_dim)
            for layer in (self.prompt_embed1, self.prompt_embed2):  # starts as the paper's head (t only)
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.latent_embed = None
        if cfg.latent_skip:
            self.latent_embed = nn.Linear(cfg.latent_dim, cfg.sem_dim)
            nn.init.zeros_(self.latent_embed.weight)  # starts as the paper's head
            nn.init.zeros_(self.latent_embed.bias)

    @property
    def needs_prompt(self) -> bool:
        """Whether `forward` takes the pooled prompt (`prompt_condition="pooled"`)."""
        return self.prompt_embed1 is not None

    def forward(
        self,
        h_BNC: torch.Tensor,
        t_B: torch.Tensor,
        detail_BMC: torch.Tensor | None,
        grid_hw: tuple[int, int],
        return_gate: bool = False,
        prompt_BC: torch.Tensor | None = None,
        z_t_BLHW: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predicts the velocity.

        Args:
            h_BNC: LLM final hidden states at the image positions, raster order over the compressed grid.
            t_B: Flow times in [0, 1] (a 0-d tensor is broadcast over the batch).
            detail_BMC: Detail residual S on the full grid, B×(H·W)×sem_dim; may be None for `injection="off"`.
            grid_hw: The compressed grid (h, w) of `h_BNC`; the output grid is (h·f, w·f).
            return_gate: Also return the gate values B×(H·W) (zeros for `off`), e.g. for a heat-map.
            prompt_BC: The pooled prompt B×llm_dim (`layers.masked_mean` over its text tokens); required by
                `prompt_condition="pooled"`, else ignored.
            z_t_BLHW: The current latent B×latent_dim×H×W; required by `latent_skip`, else ignored.

        Returns:
            The velocity B×latent_dim×H×W, and the gate values when `return_gate`.
        """
        cfg = self.cfg
        h, w = grid_hw
        if h_BNC.ndim != 3 or h_BNC.shape[1] != h * w or h_BNC.shape[2] != cfg.llm_dim:
            raise ValueError(f"h_BNC must be B×{h * w}×{cfg.llm_dim} for grid_hw={grid_hw}, got {tuple(h_BNC.shape)}")
        B = h_BNC.shape[0]
        H, W = h * cfg.shuffle_factor, w * cfg.shuffle_factor
        if detail_BMC is not None and tuple(detail_BMC.shape) != (B, H * W, cfg.sem_dim):
            raise ValueError(f"detail_BMC must be {(B, H * W, cfg.sem_dim)}, got {tuple(detail_BMC.shape)}")
        t_B = t_B.expand(B) if t_B.ndim == 0 else t_B
        if t_B.shape != (B,):
            raise ValueError(f"t_B must have shape ({B},), got {tuple(t_B.shape)}")

        c1_BC, c2_BC = self.time_embed1(t_B), self.time_embed2(t_B)
        if self.needs_prompt:
            if prompt_BC is None or tuple(prompt_BC.shape) != (B, cfg.llm_dim):
                got = None if prompt_BC is None else tuple(prompt_BC.shape)
                raise ValueError(f"prompt_condition='pooled' needs prompt_BC of shape {(B, cfg.llm_dim)}, got {got}")
            c1_BC = c1_BC + self.prompt_embed1(prompt_BC.to(c1_BC.dtype))
            c2_BC = c2_BC + self.prompt_embed2(prompt_BC.to(c2_BC.dtype))
        z_BNC = self.stage1(h_BNC, c1_BC)
        z_BMC = shuffle_tokens(z_BNC, grid_hw, cfg.shuffle_factor)
        if self.latent_embed is not None:
            if z_t_BLHW is None or tuple(z_t_BLHW.shape) != (B, cfg.latent_dim, H, W):
                got = None if z_t_BLHW is None else tuple(z_t_BLHW.shape)
                raise ValueError(f"latent_skip needs z_t_BLHW of shape {(B, cfg.latent_dim, H, W)}, got {got}")
            z_BMC = z_BMC + self.latent_embed(z_t_BLHW.flatten(2).transpose(1, 2).to(z_BMC.dtype))
        z_BMC, gate_BM = self.hfi(z_BMC, detail_BMC)
        v_BML = self.stage2(z_BMC, c2_BC)
        v_BLHW = v_BML.transpose(1, 2).reshape(B, cfg.latent_dim, H, W)
        return (v_BLHW, gate_BM) if return_gate else v_BLHW
