"""Text-to-image sampling on the model side: the prompt-cached, classifier-free-guided velocity field of an image block.

The sampler (`cheers_pl.objective.sampling.solve`) only sees a velocity function `v(z_t, t)` (STYLE.md R3). This
module builds that function for a batch of prompts: the conditional prompt (`SequenceBuilder.generation_prompt`,
ending with `<im_start>`) and its unconditional twin (every user-prompt text token replaced by `<no_mean>`, same
length, DESIGN.md §1.3) form one batch of 2B rows whose KV cache is computed once. Each call re-tokenises the current
latent (D → semantic encoder → compressor, plus the detail residual), runs only the N image tokens against the cached
prompt (bidirectional among themselves), truncates the cache back, runs the flow head and mixes
`v = v_u + s·(v_c − v_u)`. With guidance scale 1 the unconditional half is skipped.

Shape legend: B prompts, L prompt length (left-padded), N image tokens, D LLM width, P latent channels,
h/w latent grid, M = h·w.

References:
    Cheers, arXiv 2603.12793, §3 (sampling, classifier-free guidance with `<no_mean>`); Ho & Salimans, 2022.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cheers_pl.data.processing import Sequence
from cheers_pl.data.text_tokenizer import NO_MEAN
from cheers_pl.model.attention_mask import block_causal_mask, next_positions, positions_from_padding
from cheers_pl.model.llm import truncate_cache
from cheers_pl.objective.sampling import guided_velocity, initial_noise, solve

if TYPE_CHECKING:
    from cheers_pl.model.cheers import CheersModel


def left_pad(
    seqs: list[Sequence], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pads sequences to the longest one.

    Returns:
        `(input_ids, pad_mask, block_ids, prompt_mask)`, each B×L (long, bool, long, bool).
    """
    if not seqs:
        raise ValueError("left_pad needs at least one sequence")
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    pad_mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    block_ids = torch.zeros(len(seqs), length, dtype=torch.long)
    prompt_mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for row, s in enumerate(seqs):
        start = length - len(s)
        ids[row, start:] = torch.tensor(s.input_ids, dtype=torch.long)
        pad_mask[row, start:] = True
        block_ids[row, start:] = torch.tensor(s.block_ids, dtype=torch.long)
        prompt_mask[row, start:] = torch.tensor(s.prompt_mask, dtype=torch.bool)
    return ids.to(device), pad_mask.to(device), block_ids.to(device), prompt_mask.to(device)


def blank_prompt(input_ids_BL: torch.Tensor, prompt_mask_BL: torch.Tensor, no_mean_id: int) -> torch.Tensor:
    """The unconditional twin of a batch: every user-prompt text token becomes `<no_mean>`, nothing else changes."""
    return input_ids_BL.masked_fill(prompt_mask_BL, no_mean_id)


@dataclass
class GenerationResult:
    """Output of `CheersModel.generate`."""

    images: torch.Tensor  # B×3×H×W in [-1, 1]
    latents: torch.Tensor  # B×P×h×w final normalised latent (t = 1)
    gates: torch.Tensor | None  # E×B×M HFI gates of the conditional rows, one entry per velocity evaluation E
    grid_hw: tuple[int, int]  # (h, w) of the gates' M = h·w tokens (the semantic / latent grid)


class PromptVelocity:
    """`v(z_t_BPhw, t_B) -> v_BPhw` for the image block that follows fixed prompts; runs without gradients.

    Attributes:
        input_ids: The prompt batch, conditional rows first then (when guided) their `<no_mean>` twins, K×L.
        pad_mask, prompt_mask: K×L bool masks of that batch (prompt_mask marks the user-prompt text tokens).
        prompt_len: L, the number of cached positions before the image block.
    """

    @torch.no_grad()
    def __init__(
        self,
        model: "CheersModel",
        prompts: list[str],
        guidance_scale: float,
        use_cache: bool = True,
        record_gates: list | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("prompts must hold at least one prompt")
        self.model = model
        self.num_prompts = len(prompts)
        self.use_cache = use_cache
        self.record_gates = record_gates
        self.guided = guidance_scale != 1.0
        builder = model.sequence_builder
        seqs = [builder.generation_prompt(p) for p in prompts]
        ids, pad, _, prompt_mask = left_pad(seqs, builder.ids["pad"], model.device)
        if self.guided:
            ids = torch.cat([ids, blank_prompt(ids, prompt_mask, builder.ids[NO_MEAN])])
            pad, prompt_mask = torch.cat([pad, pad]), torch.cat([prompt_mask, prompt_mask])
        self.input_ids, self.pad_mask, self.prompt_mask = ids, pad, prompt_mask
        self.prompt_len = ids.shape[1]
        n = model.num_image_tokens
        # the image block: one bidirectional block (id 1) of N real positions after the prompt
        self.block_ids = torch.cat([torch.zeros_like(ids), torch.ones_like(ids[:, :1]).expand(-1, n)], dim=1)
        self.full_pad_mask = torch.cat([pad, torch.ones_like(pad[:, :1]).expand(-1, n)], dim=1)
        self.prompt_embeds = model.llm.embed_tokens(ids)
        self.cache = None
        if use_cache:
            prompt_blocks = self.block_ids[:, : self.prompt_len]
            out = model.llm(
                self.prompt_embeds,
                block_causal_mask(prompt_blocks, pad),
                positions_from_padding(pad),
                use_cache=True,
                compute_logits=False,
            )
            self.cache = out.past_key_values
        self._fn = guided_velocity(self._batched, guidance_scale) if self.guided else self._batched

    def _image_hidden(self, tokens_KND: torch.Tensor) -> torch.Tensor:
        """Final LLM hidden states K×N×D of the image block after the prompt."""
        llm = self.model.llm
        if self.cache is None:
            embeds = torch.cat([self.prompt_embeds, tokens_KND.to(self.prompt_embeds.dtype)], dim=1)
            mask = block_causal_mask(self.block_ids, self.full_pad_mask)
            out = llm(embeds, mask, positions_from_padding(self.full_pad_mask), compute_logits=False)
            return out.hidden_BLD[:, self.prompt_len :]
        n = tokens_KND.shape[1]
        mask = block_causal_mask(self.block_ids, self.full_pad_mask, query_offset=self.prompt_len)
        positions = next_positions(self.pad_mask, n)
        try:
            out = llm(
                tokens_KND.to(self.prompt_embeds.dtype),
                mask,
                positions,
                past_key_values=self.cache,
                compute_logits=False,
            )
        finally:
            truncate_cache(self.cache, self.prompt_len)  # the next call reuses the prompt-only cache
        return out.hidden_BLD

    def _batched(self, z_t_KPhw: torch.Tensor, t_K: torch.Tensor) -> torch.Tensor:
        """Unguided velocity of all K = B or 2B rows."""
        if z_t_KPhw.shape[0] != self.input_ids.shape[0]:
            raise ValueError(
                f"z_t has batch {z_t_KPhw.shape[0] // (2 if self.guided else 1)}, "
                f"but the velocity function was built for {self.num_prompts} prompts"
            )
        tokenizer = self.model.tokenizer
        if self.guided:
            # `guided_velocity` passes [z_t; z_t]: tokenise (D → encoder → projector) once and share it, which halves
            # the dominant cost of a guided step
            tokens_BND, detail_BMC = tokenizer.tokenize(z_t_KPhw[: self.num_prompts])
            tokens_KND, detail_KMC = torch.cat([tokens_BND, tokens_BND]), torch.cat([detail_BMC, detail_BMC])
        else:
            tokens_KND, detail_KMC = tokenizer.tokenize(z_t_KPhw)
        hidden_KND = self._image_hidden(tokens_KND)
        v_KPhw, gate_KM = self.model.flow_head(hidden_KND, t_K, detail_KMC, tokenizer.grid_hw, return_gate=True)
        if self.record_gates is not None:
            self.record_gates.append(gate_KM[: self.num_prompts].detach())
        return v_KPhw

    @torch.no_grad()
    def __call__(self, z_t_BPhw: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        """Guided velocity B×P×h×w at the current latent and times."""
        return self._fn(z_t_BPhw, t_B)


@torch.no_grad()
def generate_images(
    model: "CheersModel",
    prompts: list[str],
    seed: int = 0,
    num_steps: int = 80,
    guidance_scale: float = 9.5,
    alpha: float = 0.5,
    sampler: str = "euler",
    use_cache: bool = True,
    record_gates: bool = False,
) -> GenerationResult:
    """Seeded noise on the model's device → `solve` from t = 0 to 1 → frozen VAE decode, clamped to [-1, 1]."""
    gates: list[torch.Tensor] | None = [] if record_gates else None
    fn = PromptVelocity(model, prompts, guidance_scale, use_cache=use_cache, record_gates=gates)
    tokenizer = model.tokenizer
    h, w = tokenizer.semantic_grid_hw
    generator = torch.Generator(device=model.device).manual_seed(seed)
    dtype = fn.prompt_embeds.dtype
    x0 = initial_noise((len(prompts), tokenizer.latent_dim, h, w), generator, device=model.device, dtype=dtype)
    latents = solve(fn, x0, num_steps, alpha=alpha, sampler=sampler)
    images = tokenizer.vae.decode(latents).clamp(-1.0, 1.0)
    return GenerationResult(images=images, latents=latents, gates=torch.stack(gates) if gates else None, grid_hw=(h, w))
