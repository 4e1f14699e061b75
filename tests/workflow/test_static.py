"""The workflow and the code pass their linters and formatters."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, run, tool

pytestmark = pytest.mark.workflow


def test_snakemake_lint_is_clean(tmp_path):
    proc = run([tool("snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--lint"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_snakefmt_check():
    proc = run([tool("snakefmt"), "--check", "Snakefile", "rules/"])
    assert proc.returncode == 0, proc.stderr


def test_ruff_check_and_format():
    lint = run([tool("ruff"), "check", "."])
    assert lint.returncode == 0, lint.stdout
    fmt = run([tool("ruff"), "format", "--check", "."])
    assert fmt.returncode == 0, fmt.stdout


def test_no_bare_except_and_no_unsafe_torch_load():
    offenders = []
    for path in [*REPO.glob("spadec/**/*.py"), *REPO.glob("workflow_scripts/*.py")]:
        text = path.read_text()
        if "except:" in text:
            offenders.append(f"{path}: bare except")
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path}: torch.load without weights_only=True")
    assert not offenders
