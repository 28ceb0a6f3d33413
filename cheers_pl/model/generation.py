"""The prompt-cached velocity field of an image block: what the sampler integrates during text-to-image generation.

The sampler (`cheers_pl.objective.sampling.solve`) only sees a velocity function `v(z_t, t)` (STYLE.md R3). This
module builds that function for a batch of prompt ids (made from text by `cheers_pl.pipeline`): the K prompt rows
run once into a KV cache; each call re-tokenises the current latent (D → semantic encoder → compressor, plus the
detail residual), runs only the N image tokens against the cached prompt (bidirectional among themselves),
truncates the cache back and runs the flow head. With guidance (scale ≠ 1) the K = 2B rows are the B conditional
prompts followed by their unconditional twins, and `v = v_u + s·(v_c − v_u)`
(`cheers_pl.objective.sampling.guided_velocity`); z_t is tokenised once for both halves. A prompt may itself hold an
image block (zero-shot editing: the clean source image in context): its LLM tokens are given, and the generated block
gets the next block id.

Shape legend: `cheers_pl.model` (K prompt rows, L prompt length, left-padded).

References:
    Cheers, arXiv 2603.12793, §3 (sampling, classifier-free guidance with `<no_mean>`); Ho & Salimans, 2022.
"""

import torch

from cheers_pl.model.attention_mask import block_causal_mask, next_positions, positions_from_padding
from cheers_pl.model.cheers import CheersModel
from cheers_pl.model.layers import masked_mean
from cheers_pl.model.llm import truncate_cache
from cheers_pl.objective.sampling import guided_velocity


class PromptVelocity:
    """`v(z_t_BPhw, t_B) -> v_BPhw` for the image block that follows fixed prompts; runs without gradients.

    Attributes:
        input_ids, pad_mask: The prompt batch K×L (conditional rows first, then, when guided, their twins).
        prompt_len: L, the number of cached positions before the image block.
    """

    @torch.no_grad()
    def __init__(
        self,
        model: CheersModel,
        input_ids_KL: torch.Tensor,
        pad_mask_KL: torch.Tensor,
        guidance_scale: float,
        use_cache: bool = True,
        record_gates: list | None = None,
        prompt_block_ids_KL: torch.Tensor | None = None,
        prompt_image_tokens: torch.Tensor | None = None,
    ) -> None:
        """See the class docstring; `prompt_block_ids_KL` (0 text, 1 an image block in the prompt) and
        `prompt_image_tokens` (R×N×D LLM tokens of the rows holding one, in row order) put images into the prompt."""
        self.guided = guidance_scale != 1.0
        K = input_ids_KL.shape[0]
        if K == 0 or (self.guided and K % 2):
            raise ValueError(f"need B >= 1 prompt rows (2B with guidance: conditional then unconditional), got {K}")
        self.model = model
        self.num_prompts = K // 2 if self.guided else K
        self.use_cache = use_cache
        self.record_gates = record_gates
        self.input_ids, self.pad_mask = input_ids_KL, pad_mask_KL
        self.prompt_len = input_ids_KL.shape[1]
        n = model.num_image_tokens
        # the image block: one bidirectional block of N real positions after the prompt, with the next free block id
        ids = input_ids_KL
        prompt_blocks = torch.zeros_like(ids) if prompt_block_ids_KL is None else prompt_block_ids_KL
        new_block = torch.full_like(ids[:, :1], int(prompt_blocks.max()) + 1).expand(-1, n)
        self.block_ids = torch.cat([prompt_blocks, new_block], dim=1)
        self.full_pad_mask = torch.cat([pad_mask_KL, torch.ones_like(pad_mask_KL[:, :1]).expand(-1, n)], dim=1)
        if prompt_block_ids_KL is None:
            self.prompt_embeds = model.llm.embed_tokens(ids)
        else:
            self.prompt_embeds = model.embed(ids, prompt_blocks, prompt_image_tokens)
        self.cache = self.prompt_KD = None
        if use_cache or model.flow_head.needs_prompt:
            prompt_blocks = self.block_ids[:, : self.prompt_len]
            out = model.llm(
                self.prompt_embeds,
                block_causal_mask(prompt_blocks, pad_mask_KL),
                positions_from_padding(pad_mask_KL),
                use_cache=use_cache,
                compute_logits=False,
            )
            self.cache = out.past_key_values if use_cache else None
            if model.flow_head.needs_prompt:  # the head's pooled prompt (`flow_head.prompt_condition`)
                self.prompt_KD = masked_mean(out.hidden_BLD, pad_mask_KL & (prompt_blocks == 0))
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
        vision = self.model.vision
        if self.guided:
            # `guided_velocity` passes [z_t; z_t]: tokenise (D → encoder → projector) once and share it, which halves
            # the dominant cost of a guided step
            tokens_BND, detail_BMC = vision(z_t_KPhw[: self.num_prompts])
            tokens_KND, detail_KMC = torch.cat([tokens_BND, tokens_BND]), torch.cat([detail_BMC, detail_BMC])
        else:
            tokens_KND, detail_KMC = vision(z_t_KPhw)
        hidden_KND = self._image_hidden(tokens_KND)
        out_KPhw, gate_KM = self.model.flow_head(
            hidden_KND, t_K, detail_KMC, vision.grid_hw, return_gate=True, prompt_BC=self.prompt_KD, z_t_BLHW=z_t_KPhw
        )
        if self.record_gates is not None:
            self.record_gates.append(gate_KM[: self.num_prompts].detach())
        return self.model.velocity(out_KPhw, z_t_KPhw, t_K)

    @torch.no_grad()
    def __call__(self, z_t_BPhw: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        """Guided velocity B×P×h×w at the current latent and times."""
        return self._fn(z_t_BPhw, t_B)
