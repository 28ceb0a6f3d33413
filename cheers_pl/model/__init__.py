"""Network components: plain nn.Modules configured by co-located dataclasses (STYLE.md R2)."""
