"""notebooks/quickstart.ipynb runs top to bottom on a tiny checkpoint (outputs are cleared in git)."""

import os
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from cheers_pl.checkpoint import CONFIG_KEY
from cheers_pl.config import compose, to_yaml
from cheers_pl.stage import build_stage

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_notebook_outputs_are_cleared() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_notebook_executes(shard_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose("tiny_generation", [f"data.shard_dir={shard_dir}", "stage.init_from=null"])
    stage = build_stage(cfg)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": stage.state_dict(), CONFIG_KEY: to_yaml(cfg)}, ckpt)
    monkeypatch.setenv("CHEERS_CKPT", str(ckpt))
    monkeypatch.setenv("CHEERS_STEPS", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "truth:" in printed and "model:" in printed
