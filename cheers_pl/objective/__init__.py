"""Generative processes and losses; they take networks or velocity functions as arguments (STYLE.md R3)."""
