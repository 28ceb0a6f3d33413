"""Evaluation: scene parsing, GenEval-style scoring, reports."""
