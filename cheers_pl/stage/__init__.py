"""Training stages: LightningModules that orchestrate components and objectives (STYLE.md R4)."""
