"""Diagnosis of what limits a checkpoint: probes, overfit checks, time profile (the `diagnose` command)."""
