"""Network components: plain nn.Modules configured by co-located dataclasses (STYLE.md R2); tensors in, tensors out.

Nothing here reads text, data, stages or metrics: prompts become ids in `cheers_pl.pipeline`, and the flow process
(noise, interpolation, t-sampling, loss, samplers) lives in `cheers_pl.objective`.

Shape legend (the one definition; a file lists only what it adds):
    B batch, L sequence length, D LLM width, V vocabulary, K keys (cached + new) or prompt rows,
    R rows of a batch that hold an image block (in row order), H/W image side,
    P latent channels of the normalised VAE latent z (patch² · C raw channels), h/w latent grid = semantic grid,
    M = h·w semantic tokens of width C (the encoder width; the flow head's full grid),
    f the (un)shuffle factor, N = M / f² LLM tokens per image block (the compressed grid h/f × w/f),
    T decoded text steps, E sampler steps (velocity evaluations).
"""
