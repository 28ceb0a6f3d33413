import torch

from cheers_pl.model.layers import TimestepEmbedder, sinusoidal_embedding


def test_sinusoid_scales_t_by_1000():
    t = torch.tensor([0.0, 0.5, 1.0])
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    # highest frequency is 1: its cosine is cos(1000·t)
    torch.testing.assert_close(emb[:, 0], torch.cos(1000 * t))
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))


def test_nearby_times_are_distinguishable():
    emb = sinusoidal_embedding(torch.tensor([0.50, 0.51]), 256)
    assert (emb[0] - emb[1]).norm() > 1.0


def test_timestep_embedder_shape_and_dtype():
    embedder = TimestepEmbedder(16, freq_dim=32)
    out = embedder(torch.rand(4))
    assert out.shape == (4, 16)
    assert embedder.to(torch.float64)(torch.rand(4)).dtype == torch.float64
    assert sinusoidal_embedding(torch.rand(2), 7).shape == (2, 7)


def test_raw_t_option_is_the_native_sinusoid_at_t_over_1000():
    """time_scale=1 (the released checkpoint) embeds raw t: the native embedding of t/1000, not of t."""
    t = torch.tensor([0.1, 0.5, 0.9])
    raw = sinusoidal_embedding(t, 16, time_scale=1.0)
    torch.testing.assert_close(raw, sinusoidal_embedding(t / 1000, 16))
    torch.testing.assert_close(raw[:, 0], torch.cos(t))
    assert not torch.allclose(raw, sinusoidal_embedding(t, 16), atol=1e-2)
    embedder = TimestepEmbedder(8, freq_dim=16, time_scale=1.0)
    native = TimestepEmbedder(8, freq_dim=16)
    native.load_state_dict(embedder.state_dict())
    assert not torch.allclose(embedder(t), native(t))
