"""Text in, text and images out: the pipeline over `CheersModel` (in the spirit of diffusers' pipelines over models).

`CheersPipeline(model, text_tokenizer, sampling)` turns questions and prompts into ids (`SequenceBuilder`, the chat
template of DESIGN.md §1.2), runs the model's tensor entry points and turns ids back into text:
- `answer(images, questions)`: one understanding prompt per image (clean image, t = 1), KV-cached decoding until
  `<|im_end|>`.
- `generate(prompts)`: the generation prompt up to `<im_start>`, its unconditional twin for classifier-free guidance
  (every user-prompt token replaced by `<no_mean>`, same length), the prompt-cached velocity field
  (`cheers_pl.model.generation.PromptVelocity`), seeded noise, the ODE sampler (`cheers_pl.objective.sampling`) and
  the frozen VAE decoder.
The stages delegate `answer` and `generate_images` here, and so do the CLI, the evaluation and the notebook.
`save_pretrained` / `from_pretrained` add the text tokenizer to the model's exported directory.

Shape legend: `cheers_pl.model`.
"""

from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from cheers_pl.data.batch import Padded, left_pad
from cheers_pl.data.processing import SequenceBuilder
from cheers_pl.data.text_tokenizer import NO_MEAN, TURN_END, load_text_tokenizer, save_text_tokenizer
from cheers_pl.model.cheers import CheersModel
from cheers_pl.model.generation import PromptVelocity
from cheers_pl.model.weights import TOKENIZER_DIR
from cheers_pl.objective.sampling import SamplingConfig, initial_noise, solve


@dataclass
class GenerationResult:
    """Output of `CheersPipeline.generate`."""

    images: torch.Tensor  # B×3×H×W in [-1, 1]
    latents: torch.Tensor  # B×P×h×w final normalised latent (t = 1)
    gates: torch.Tensor | None  # E×B×M HFI gates of the conditional rows, one entry per velocity evaluation E
    grid_hw: tuple[int, int]  # (h, w) of the gates' M = h·w tokens (the semantic / latent grid)


def blank_prompt(input_ids_BL: torch.Tensor, prompt_mask_BL: torch.Tensor, no_mean_id: int) -> torch.Tensor:
    """The unconditional twin of a batch: every user-prompt text token becomes `<no_mean>`, nothing else changes."""
    return input_ids_BL.masked_fill(prompt_mask_BL, no_mean_id)


class CheersPipeline:
    """Questions → answers and prompts → images with one `CheersModel` and its text tokenizer."""

    def __init__(
        self, model: CheersModel, text_tokenizer: PreTrainedTokenizerBase, sampling: SamplingConfig | None = None
    ) -> None:
        self.model = model
        self.text_tokenizer = text_tokenizer
        self.builder = SequenceBuilder(text_tokenizer, model.num_image_tokens)
        self.sampling = sampling if sampling is not None else SamplingConfig()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _padded(self, seqs: list) -> Padded:
        return left_pad(seqs, self.builder.ids["pad"]).to(self.device)

    @torch.no_grad()
    def answer(
        self,
        images_B3HW: torch.Tensor,
        questions: list[str],
        max_new_tokens: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """Answer one question per image; decoding stops at `<|im_end|>`.

        Returns:
            The decoded answers, special tokens removed and whitespace stripped.
        """
        if images_B3HW.shape[0] != len(questions):
            raise ValueError(f"got {images_B3HW.shape[0]} images but {len(questions)} questions")
        batch = self._padded([self.builder.understanding_prompt(q) for q in questions])
        eos = self.builder.ids[TURN_END]
        new_BT = self.model.answer_ids(
            images_B3HW,
            batch.input_ids,
            batch.pad_mask,
            batch.block_ids,
            max_new_tokens,
            eos,
            do_sample=do_sample,
            temperature=temperature,
            generator=generator,
            use_cache=use_cache,
        )
        answers = []
        for row in new_BT.tolist():
            row = row[: row.index(eos)] if eos in row else row
            answers.append(self.text_tokenizer.decode(row, skip_special_tokens=True).strip())
        return answers

    def prompt_batch(self, prompts: list[str], guided: bool) -> Padded:
        """The generation prompts (up to `<im_start>`), followed by their unconditional twins when `guided`."""
        if not prompts:
            raise ValueError("prompts must hold at least one prompt")
        batch = self._padded([self.builder.generation_prompt(p) for p in prompts])
        if not guided:
            return batch
        twins = blank_prompt(batch.input_ids, batch.prompt_mask, self.builder.ids[NO_MEAN])
        doubled = Padded(*(torch.cat([getattr(batch, f.name)] * 2) for f in fields(Padded)))
        doubled.input_ids = torch.cat([batch.input_ids, twins])
        return doubled

    def velocity_fn(
        self, prompts: list[str], guidance_scale: float, use_cache: bool = True, record_gates: list | None = None
    ) -> PromptVelocity:
        """The guided velocity field `v(z_t_BPhw, t_B)` of the image block after `prompts` (no gradients).

        The prompt (and its `<no_mean>` twin when `guidance_scale != 1`) runs once into a KV cache; each call
        re-tokenises z_t and runs only the N image tokens. When `record_gates` is a list, each call appends the
        conditional half's gate values B×M.
        """
        batch = self.prompt_batch(prompts, guided=guidance_scale != 1.0)
        return PromptVelocity(
            self.model, batch.input_ids, batch.pad_mask, guidance_scale, use_cache=use_cache, record_gates=record_gates
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seed: int = 0,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        alpha: float | None = None,
        sampler: str | None = None,
        use_cache: bool = True,
        record_gates: bool = False,
    ) -> GenerationResult:
        """Text → image: seeded noise at t = 0 → `solve` to t = 1 → frozen VAE decode, clamped to [-1, 1].

        Settings left None take the pipeline's `sampling` (default: the paper's, `SamplingConfig`).

        Returns:
            `GenerationResult` with images B×3×H×W in [-1, 1], final latents B×P×h×w, gates (one B×M entry per
            velocity evaluation, stacked, or None) and the gates' grid (h, w).
        """
        given = dict(num_steps=num_steps, guidance_scale=guidance_scale, alpha=alpha, sampler=sampler)
        s = replace(self.sampling, **{k: v for k, v in given.items() if v is not None})
        gates: list[torch.Tensor] | None = [] if record_gates else None
        fn = self.velocity_fn(prompts, s.guidance_scale, use_cache=use_cache, record_gates=gates)
        vision = self.model.vision
        h, w = vision.semantic_grid_hw
        generator = torch.Generator(device=self.device).manual_seed(seed)
        dtype = fn.prompt_embeds.dtype
        x0 = initial_noise((len(prompts), vision.latent_dim, h, w), generator, device=self.device, dtype=dtype)
        latents = solve(fn, x0, s.num_steps, alpha=s.alpha, sampler=s.sampler)
        images = vision.vae.decode(latents).clamp(-1.0, 1.0)
        stacked = torch.stack(gates) if gates else None
        return GenerationResult(images=images, latents=latents, gates=stacked, grid_hw=(h, w))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Exports config, weights and the text tokenizer (`tokenizer/`) to `directory`; returns it."""
        out = self.model.save_pretrained(directory)
        save_text_tokenizer(self.text_tokenizer, out / TOKENIZER_DIR)
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> "CheersPipeline":
        """Reloads a directory written by `save_pretrained` (model in eval mode, text tokenizer) in one call.

        Raises:
            ValueError: when a part is missing or the weights do not fit the config.
        """
        src = Path(directory)
        if not (src / TOKENIZER_DIR).is_dir():
            raise ValueError(f"{src} is not an exported Cheers pipeline: missing {[TOKENIZER_DIR]}")
        model = CheersModel.from_pretrained(src, device=device, dtype=dtype)
        return cls(model, load_text_tokenizer(str(src / TOKENIZER_DIR)))
