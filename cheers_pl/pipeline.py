"""Text in, text and images out: the pipeline over `CheersModel` (in the spirit of diffusers' pipelines over models).

`CheersPipeline(model, text_tokenizer, sampling)` turns questions and prompts into ids (`SequenceBuilder`, the chat
template of DESIGN.md §1.2), runs the model's tensor entry points and turns ids back into text:
- `answer(images, questions)`: one understanding prompt per image (clean image, t = 1), KV-cached decoding until
  `<|im_end|>`.
- `generate(prompts)`: the generation prompt up to `<im_start>`, its unconditional twin for classifier-free guidance
  (same length; `sampling.unconditional="prompt"` replaces every user-prompt token by `<no_mean>`, `"all_text"` every
  token but `<im_start>`, `<im_end>` and the image positions, as the released code), the prompt-cached velocity field
  (`cheers_pl.model.generation.PromptVelocity`), seeded noise, the ODE sampler (`cheers_pl.objective.sampling`) and
  the frozen VAE decoder.
- `edit(images, instructions)`: the released code's zero-shot editing: the source image stays in context as a clean
  (t = 1) `<image>` block, the latent starts at `t0·z1(source) + (1 − t0)·noise` and is integrated from t0.
The stages delegate `answer` and `generate_images` here, and so do the CLI, the evaluation and the notebook.
`save_pretrained` / `from_pretrained` add the text tokenizer (`tokenizer/`) and the pipeline's settings
(`pipeline.json`: sampling defaults and `ProcessingConfig`) to the model's exported directory.

Shape legend: `cheers_pl.model`.
"""

import dataclasses
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from cheers_pl.data.batch import Padded, left_pad
from cheers_pl.data.processing import PAD_FILLS, ProcessingConfig, SequenceBuilder, understanding_transform
from cheers_pl.data.text_tokenizer import (
    IMAGE_END,
    IMAGE_START,
    NO_MEAN,
    TURN_END,
    load_text_tokenizer,
    save_text_tokenizer,
)
from cheers_pl.model.cheers import CheersModel
from cheers_pl.model.generation import PromptVelocity
from cheers_pl.model.weights import TOKENIZER_DIR, config_from_dict
from cheers_pl.objective.sampling import SamplingConfig, initial_noise, solve

PIPELINE_FILE = "pipeline.json"


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


def blank_all_text(batch: Padded, keep_ids: list[int], no_mean_id: int) -> torch.Tensor:
    """The released code's unconditional twin: every real token becomes `<no_mean>` except `keep_ids` (`<im_start>`,
    `<im_end>`) and the image positions (block id > 0); padding stays padding."""
    keep_BL = torch.isin(batch.input_ids, torch.tensor(keep_ids, device=batch.input_ids.device))
    blank_BL = batch.pad_mask & ~keep_BL & (batch.block_ids == 0)
    return batch.input_ids.masked_fill(blank_BL, no_mean_id)


def write_settings(directory: str | Path, sampling: SamplingConfig, processing: ProcessingConfig) -> Path:
    """Writes `<directory>/pipeline.json` (the sampling defaults and the processing of a pipeline); returns it."""
    path = Path(directory) / PIPELINE_FILE
    settings = {"sampling": dataclasses.asdict(sampling), "processing": processing.as_dict()}
    path.write_text(json.dumps(settings, indent=2))
    return path


class CheersPipeline:
    """Questions → answers and prompts → images with one `CheersModel` and its text tokenizer.

    `sampling` holds the sampler defaults (the paper's by default), `processing` the chat template and image padding
    (native by default; `ProcessingConfig.official()` for the released checkpoint).
    """

    def __init__(
        self,
        model: CheersModel,
        text_tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingConfig | None = None,
        processing: ProcessingConfig | None = None,
    ) -> None:
        self.model = model
        self.text_tokenizer = text_tokenizer
        self.processing = processing if processing is not None else ProcessingConfig()
        self.builder = SequenceBuilder(text_tokenizer, model.num_image_tokens, self.processing)
        self.sampling = sampling if sampling is not None else SamplingConfig()

    @property
    def image_size(self) -> int:
        """Side of the square images the model reads and writes."""
        return self.model.vision.encoder.image_size

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB image → 3×S×S in [-1, 1] for understanding or editing (longer side resized, padded per
        `processing.pad_fill`)."""
        return understanding_transform(image, self.image_size, fill=PAD_FILLS[self.processing.pad_fill])

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

    def unconditional_ids(self, batch: Padded, unconditional: str | None = None) -> torch.Tensor:
        """The `<no_mean>` twins of a prompt batch (same length) per `unconditional` (default `sampling`'s)."""
        mode = self.sampling.unconditional if unconditional is None else unconditional
        no_mean = self.builder.ids[NO_MEAN]
        if mode == "prompt":
            return blank_prompt(batch.input_ids, batch.prompt_mask, no_mean)
        if mode == "all_text":
            return blank_all_text(batch, [self.builder.ids[IMAGE_START], self.builder.ids[IMAGE_END]], no_mean)
        raise ValueError(f"sampling.unconditional must be 'prompt' or 'all_text', got {mode!r}")

    def _guided(self, batch: Padded, guided: bool, unconditional: str | None) -> Padded:
        if not guided:
            return batch
        doubled = Padded(
            *(None if (v := getattr(batch, f.name)) is None else torch.cat([v] * 2) for f in fields(Padded))
        )
        doubled.input_ids = torch.cat([batch.input_ids, self.unconditional_ids(batch, unconditional)])
        return doubled

    def prompt_batch(self, prompts: list[str], guided: bool, unconditional: str | None = None) -> Padded:
        """The generation prompts (up to `<im_start>`), followed by their unconditional twins when `guided`."""
        if not prompts:
            raise ValueError("prompts must hold at least one prompt")
        return self._guided(self._padded([self.builder.generation_prompt(p) for p in prompts]), guided, unconditional)

    def velocity_fn(
        self,
        prompts: list[str],
        guidance_scale: float,
        use_cache: bool = True,
        record_gates: list | None = None,
        unconditional: str | None = None,
    ) -> PromptVelocity:
        """The guided velocity field `v(z_t_BPhw, t_B)` of the image block after `prompts` (no gradients).

        The prompt (and its `<no_mean>` twin when `guidance_scale != 1`) runs once into a KV cache; each call
        re-tokenises z_t and runs only the N image tokens. When `record_gates` is a list, each call appends the
        conditional half's gate values B×M.
        """
        batch = self.prompt_batch(prompts, guided=guidance_scale != 1.0, unconditional=unconditional)
        return PromptVelocity(
            self.model, batch.input_ids, batch.pad_mask, guidance_scale, use_cache=use_cache, record_gates=record_gates
        )

    def _settings(self, **given: object) -> SamplingConfig:
        return replace(self.sampling, **{k: v for k, v in given.items() if v is not None})

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
        time_grid: str | None = None,
    ) -> GenerationResult:
        """Text → image: seeded noise at t = 0 → `solve` to t = 1 → frozen VAE decode, clamped to [-1, 1].

        Settings left None take the pipeline's `sampling` (default: the paper's, `SamplingConfig`).

        Returns:
            `GenerationResult` with images B×3×H×W in [-1, 1], final latents B×P×h×w, gates (one B×M entry per
            velocity evaluation, stacked, or None) and the gates' grid (h, w).
        """
        s = self._settings(
            num_steps=num_steps, guidance_scale=guidance_scale, alpha=alpha, sampler=sampler, time_grid=time_grid
        )
        gates: list[torch.Tensor] | None = [] if record_gates else None
        fn = self.velocity_fn(prompts, s.guidance_scale, use_cache, gates, s.unconditional)
        h, w = self.model.vision.semantic_grid_hw
        x0 = self._noise(len(prompts), seed, fn.prompt_embeds.dtype)
        return self._finish(solve(fn, x0, s.num_steps, s.alpha, s.sampler, grid=s.time_grid), gates)

    def _noise(self, batch: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(seed)
        h, w = self.model.vision.semantic_grid_hw
        return initial_noise((batch, self.model.vision.latent_dim, h, w), generator, device=self.device, dtype=dtype)

    def _finish(self, latents: torch.Tensor, gates: list[torch.Tensor] | None) -> GenerationResult:
        images = self.model.vision.vae.decode(latents).clamp(-1.0, 1.0)
        stacked = torch.stack(gates) if gates else None
        return GenerationResult(images, latents, stacked, self.model.vision.semantic_grid_hw)

    @torch.no_grad()
    def edit(
        self,
        images_B3HW: torch.Tensor,
        instructions: list[str],
        seed: int = 0,
        t0: float = 0.1,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        alpha: float | None = None,
        sampler: str | None = None,
        time_grid: str | None = None,
        use_cache: bool = True,
        record_gates: bool = False,
    ) -> GenerationResult:
        """Zero-shot editing (the released code's mode): source image + instruction → edited image.

        The source stays in the prompt as a clean (t = 1) `<image>` block; the latent starts as
        `t0·z1(source) + (1 − t0)·noise` and is integrated over `int(num_steps·(1 − t0))` steps of the time grid from
        t0, whose first velocity is taken at `warp(t0)` (≈ 0.053 for t0 = 0.1, α = 0.5), as the released code does.
        The unconditional twin keeps the source image and blanks the instruction (or all text, per `sampling`).

        Args:
            images_B3HW: Source images in [-1, 1] (e.g. from `preprocess`).
            instructions: One instruction per image.
            t0: Where the integration starts (0 < t0 < 1); t0 → 1 returns the source latent.

        Returns:
            `GenerationResult` as `generate`.
        """
        if images_B3HW.shape[0] != len(instructions) or not instructions:
            raise ValueError(f"got {images_B3HW.shape[0]} images for {len(instructions)} instructions")
        if not 0.0 < t0 < 1.0:
            raise ValueError(f"edit t0={t0} must lie in (0, 1)")
        s = self._settings(
            num_steps=num_steps, guidance_scale=guidance_scale, alpha=alpha, sampler=sampler, time_grid=time_grid
        )
        vision = self.model.vision
        vae_dtype = vision.vae.autoencoder.decoder.conv_in.weight.dtype
        z1 = vision.encode(images_B3HW.to(self.device, vae_dtype))
        source_tokens, _ = vision(z1)  # the clean source block (t = 1)
        guided = s.guidance_scale != 1.0
        batch = self._guided(self._padded([self.builder.edit_prompt(i) for i in instructions]), guided, s.unconditional)
        gates: list[torch.Tensor] | None = [] if record_gates else None
        fn = PromptVelocity(
            self.model,
            batch.input_ids,
            batch.pad_mask,
            s.guidance_scale,
            use_cache=use_cache,
            record_gates=gates,
            prompt_block_ids_KL=batch.block_ids,
            prompt_image_tokens=torch.cat([source_tokens] * (2 if guided else 1)),
        )
        x_t0 = t0 * z1 + (1 - t0) * self._noise(len(instructions), seed, z1.dtype)
        return self._finish(solve(fn, x_t0, s.num_steps, s.alpha, s.sampler, grid=s.time_grid, t0=t0), gates)

    def save_pretrained(self, directory: str | Path, max_shard_size: int | None = None) -> Path:
        """Exports config, weights (sharded above `max_shard_size` bytes), the text tokenizer (`tokenizer/`) and the
        pipeline settings (`pipeline.json`) to `directory`; returns it."""
        out = self.model.save_pretrained(directory, max_shard_size=max_shard_size)
        save_text_tokenizer(self.text_tokenizer, out / TOKENIZER_DIR)
        write_settings(out, self.sampling, self.processing)
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> "CheersPipeline":
        """Reloads a directory written by `save_pretrained` (model in eval mode, text tokenizer, settings) in one call.

        A directory without `pipeline.json` (written before it existed) gets the default settings.

        Raises:
            ValueError: when a part is missing, a setting is unknown or the weights do not fit the config.
        """
        src = Path(directory)
        if not (src / TOKENIZER_DIR).is_dir():
            raise ValueError(f"{src} is not an exported Cheers pipeline: missing {[TOKENIZER_DIR]}")
        settings = json.loads((src / PIPELINE_FILE).read_text()) if (src / PIPELINE_FILE).is_file() else {}
        unknown = sorted(set(settings) - {"sampling", "processing"})
        if unknown:
            raise ValueError(f"{src / PIPELINE_FILE}: unknown keys {unknown}; expected 'sampling', 'processing'")
        sampling = config_from_dict(SamplingConfig, settings.get("sampling", {}), "sampling.")
        processing = config_from_dict(ProcessingConfig, settings.get("processing", {}), "processing.")
        model = CheersModel.from_pretrained(src, device=device, dtype=dtype)
        return cls(model, load_text_tokenizer(str(src / TOKENIZER_DIR)), sampling, processing)
