"""cheers_pl: Cheers (arXiv 2603.12793) in PyTorch Lightning — unified image understanding and generation."""

__version__ = "0.1.0"
