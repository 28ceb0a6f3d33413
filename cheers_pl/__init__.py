"""cheers_pl: a PyTorch Lightning implementation of Cheers (arXiv 2603.12793), unified image understanding and generation."""

__version__ = "0.1.0"
