"""The README's two commands: each installs what it needs, and is quick once installed."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.workflow


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## The two commands") :].split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["bash scripts/run.sh", "bash scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/test\.sh$", ci, re.M), ci


def _fake_venv(tmp_path: Path) -> Path:
    """A venv whose python records its calls, so a test sees whether pip ran."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    python.chmod(0o755)
    return venv


def test_install_is_a_no_op_when_the_venv_matches_and_reruns_when_it_does_not(tmp_path):
    venv = _fake_venv(tmp_path)
    env = {**os.environ, "SPADEC_VENV": str(venv), "PYTHON": str(venv / "bin" / "python")}
    install = ["bash", str(REPO / "scripts" / "install.sh")]
    # First call: no stamp, so it installs (our fake python accepts every pip call).
    subprocess.run(install, env=env, check=True, capture_output=True)
    calls = (tmp_path / "calls").read_text()
    assert "pip install" in calls and "requirements.txt" in calls
    stamp = (venv / ".spadec-install").read_text()
    # Second call: the same inputs, nothing runs.
    (tmp_path / "calls").unlink()
    subprocess.run(install, env=env, check=True, capture_output=True)
    assert not (tmp_path / "calls").exists()
    # Another torch spec (e.g. a CUDA build) is another install.
    env["SPADEC_TORCH_SPEC"] = "torch==2.13.0 --index-url http://example.invalid"
    subprocess.run(install, env=env, check=True, capture_output=True)
    assert "example.invalid" in (tmp_path / "calls").read_text()
    assert (venv / ".spadec-install").read_text() != stamp
