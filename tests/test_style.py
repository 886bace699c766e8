"""The workflow's Snakefile and rule modules are snakefmt-clean (the formatter of the Snakemake community)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_workflow_is_snakefmt_clean():
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    if snakefmt is None:
        pytest.fail("snakefmt is not installed: it is a test dependency (pip install -e '.[test]')")
    files = [str(REPO / "Snakefile"), *sorted(str(p) for p in (REPO / "workflow").rglob("*.smk"))]
    result = subprocess.run([snakefmt, "--check", "--config", str(REPO / "pyproject.toml"), *files],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, f"run snakefmt on the workflow:\n{result.stdout}{result.stderr}"
