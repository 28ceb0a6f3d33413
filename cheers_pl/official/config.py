"""The released checkpoint's `config.json` (UMMConfig) → `CheersConfig` with the released computation's values.

Facts taken from the released modeling code (github.com/AI9Stars/Cheers, `Training/cheers_config/`, read, not
copied): the sub-configs' defaults where `config.json` leaves a key out (VAE: ch 128, ch_mult [1, 2, 4, 4],
2 res blocks, 32 latent channels; text: 28 layers, RoPE θ 1e6, RMSNorm eps 1e-6); the heads hard-coded in
`UMMModel` (stage 1: 7 DiT blocks at the LLM width with the LLM's heads and KV heads, output 2×2 × the SigLIP width;
stage 2: 3 blocks at the SigLIP width with the SigLIP's heads and the LLM's KV heads, output `vae_decoder_config.ch`
channels, i.e. the 4·32 = 128 patchified latent channels); the VAE's GroupNorms of 32 groups and BatchNorm eps 1e-4;
and the computation the flow head, projector, VAE and decoder copy use (`OFFICIAL_*` below). Depths are counted
from the tensor names when given (a tiny official-layout checkpoint has fewer blocks than the release).
"""

import re
from collections.abc import Iterable

from cheers_pl.model.cheers import CheersConfig
from cheers_pl.model.flow_head import FlowHeadConfig
from cheers_pl.model.llm import LLMConfig
from cheers_pl.model.vae import VAEConfig
from cheers_pl.model.vision_encoder import VisionEncoderConfig
from cheers_pl.model.vision_tokenizer import VisionTokenizerConfig
from cheers_pl.objective.sampling import SamplingConfig

VAE_DEFAULTS = {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "z_channels": 32, "in_channels": 3}
TEXT_DEFAULTS = {"num_hidden_layers": 28, "rope_theta": 1e6, "rms_norm_eps": 1e-6, "max_position_embeddings": 131072}
SIGLIP_SUPPORTED = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}  # what `SiglipVisionModel` computes
RELEASED_DEPTHS = {"stage1": 7, "stage2": 3}
STAGE_PREFIXES = {"stage1": "model.gen_projector.diffusion_head_a.", "stage2": "model.hi_projector.diffusion_head_a."}
LLM_LAYERS = "model.language_model.layers."
SIGLIP_LAYERS = "model.vision_representation.encoder.layers."

# the released computation, each a config value of ours (the README's native-vs-official table)
OFFICIAL_FLOW_HEAD = dict(
    time_scale=1.0,  # sinusoid of raw t ∈ [0, 1]
    stage2_positions="half_twice",  # stage-2 RoPE positions 0..M/2−1 twice
    qkv_bias=False,
    norm_weights=True,  # weighted RMSNorms (eps 1e-6) in the DiT blocks and final layers
    modulation_dtype="float32",
    hfi_norm_eps=1e-5,  # nn.LayerNorm default
    rope_theta=10000.0,
    mlp_ratio=4.0,
    time_freq_dim=256,
)
OFFICIAL_VISION = dict(compressor_norm_eps=1e-5, decoder_statistics="own", compression=2, encoder_input="pixels")
OFFICIAL_VAE = dict(pixel_range="unit", norm_num_groups=32, batch_norm_eps=1e-4, patch_size=2)


def official_sampling() -> SamplingConfig:
    """The released inference script's sampling (`Inference/T2I.py`: 80 steps, guidance 9.5, α 0.5), its time grid
    (an extra Euler step of 1/N at t = 1) and its unconditional prompt (all text but the image markers blanked)."""
    return SamplingConfig(
        num_steps=80, guidance_scale=9.5, alpha=0.5, sampler="euler", time_grid="official", unconditional="all_text"
    )


def count_blocks(names: Iterable[str], prefix: str) -> int | None:
    """How many numbered blocks `<prefix><i>.` the names hold (None when none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for n in names if (m := pattern.match(n))}
    return max(found) + 1 if found else None


def _section(config: dict, key: str) -> dict:
    value = config.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"config.json: {key} must be a mapping, got {type(value).__name__}")
    return value


def official_cheers_config(
    config: dict, names: Iterable[str] | None = None, tie_word_embeddings: bool = False
) -> CheersConfig:
    """The `CheersConfig` of a released-layout checkpoint.

    Args:
        config: The checkpoint's `config.json` (UMMConfig) as a dict.
        names: Its tensor names (from the index or the file); depths are counted from them. None: the release's.
        tie_word_embeddings: Build a tied LM head (when the checkpoint's `lm_head.weight` equals the embedding).

    Raises:
        ValueError: naming the key when the config describes a computation this package does not reproduce.
    """
    names = list(names or [])
    text = {**TEXT_DEFAULTS, **_section(config, "text_config")}
    siglip = _section(config, "vision_representation_config")
    vae_enc = {**VAE_DEFAULTS, **_section(config, "vae_encoder_config")}
    vae_dec = {**VAE_DEFAULTS, **_section(config, "vae_decoder_config")}
    for key in ("ch", "ch_mult", "num_res_blocks", "z_channels"):
        if vae_enc[key] != vae_dec[key]:
            raise ValueError(f"config.json: vae_encoder_config.{key}={vae_enc[key]} != vae_decoder_config.{key}")
    for key, value in SIGLIP_SUPPORTED.items():
        if siglip.get(key, value) != value:
            raise ValueError(f"config.json: vision_representation_config.{key}={siglip[key]!r}; supported: {value!r}")
    latent_dim = 4 * vae_enc["z_channels"]
    if vae_dec["ch"] != latent_dim:  # the released stage 2 outputs `ch` channels as the patchified latent
        raise ValueError(f"config.json: vae_decoder_config.ch={vae_dec['ch']} must equal 4·z_channels={latent_dim}")
    depth = {k: count_blocks(names, p) or RELEASED_DEPTHS[k] for k, p in STAGE_PREFIXES.items()}
    num_layers = count_blocks(names, LLM_LAYERS) or text["num_hidden_layers"]
    siglip_layers = count_blocks(names, SIGLIP_LAYERS) or siglip["num_hidden_layers"]
    llm = LLMConfig(
        vocab_size=text["vocab_size"],
        dim=text["hidden_size"],
        num_layers=num_layers,
        num_heads=text["num_attention_heads"],
        num_kv_heads=text["num_key_value_heads"],
        mlp_dim=text["intermediate_size"],
        rope_theta=float(text["rope_theta"]),
        max_position=text["max_position_embeddings"],
        tie_word_embeddings=tie_word_embeddings,
        rms_norm_eps=float(text["rms_norm_eps"]),
    )
    encoder = VisionEncoderConfig(
        image_size=siglip["image_size"],
        patch_size=siglip["patch_size"],
        dim=siglip["hidden_size"],
        num_layers=siglip_layers,
        num_heads=siglip["num_attention_heads"],
        mlp_dim=siglip["intermediate_size"],
        in_channels=siglip.get("num_channels", 3),
    )
    vae = VAEConfig(
        subfolder=None,
        in_channels=vae_enc["in_channels"],
        block_out_channels=[vae_enc["ch"] * m for m in vae_enc["ch_mult"]],
        layers_per_block=vae_enc["num_res_blocks"],
        latent_channels=vae_enc["z_channels"],
        **OFFICIAL_VAE,
    )
    vision = VisionTokenizerConfig(vae=vae, encoder=encoder, llm_dim=llm.dim, **OFFICIAL_VISION)
    head = FlowHeadConfig(
        llm_dim=llm.dim,
        sem_dim=encoder.dim,
        latent_dim=latent_dim,
        shuffle_factor=vision.compression,
        stage1_depth=depth["stage1"],
        stage1_heads=llm.num_heads,
        stage1_kv_heads=llm.num_kv_heads,
        stage2_depth=depth["stage2"],
        stage2_heads=encoder.num_heads,
        stage2_kv_heads=llm.num_kv_heads,
        **OFFICIAL_FLOW_HEAD,
    )
    return CheersConfig(vision=vision, llm=llm, flow_head=head)
