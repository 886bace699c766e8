"""The conda environment file parses and agrees with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"snakemake-minimal": "snakemake", "matplotlib-base": "matplotlib", "pytorch": "torch"}


def _split(requirement: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert m, requirement
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_conda_env_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pypi = dict(_split(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        assert env["channels"][0] == "conda-forge"
        conda = dict(_split(d) for d in env["dependencies"] if isinstance(d, str))
        python = conda.pop("python")
        assert python == ">=" + project["requires-python"].lstrip(">=")
        translated = {CONDA_TO_PYPI.get(name, name): spec for name, spec in conda.items()}
        assert translated == pypi, f"{env_file.name} disagrees with pyproject.toml"


def test_torch_is_a_range_so_cluster_builds_are_kept():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = [d for d in project["dependencies"] if d.startswith("torch")]
    assert torch and ">=" in torch[0] and "==" not in torch[0]
