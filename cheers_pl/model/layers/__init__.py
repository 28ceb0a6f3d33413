"""Reusable transformer layers: attention, MLP, norms, RoPE, adaLN, timestep embeddings."""
