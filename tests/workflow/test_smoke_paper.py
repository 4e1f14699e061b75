"""The paper configs, executed: each one's whole DAG in smoke mode (`--config smoke=true`,
spadec/smoke.py) to the final tables, offline, on the CPU."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import REPO, micro_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]
# llama2-7b smokes to the vicuna-7b experiment but for its names (Llama, the same template
# and settings: tests/unit/test_smoke.py::test_vicuna_and_llama2_smoke_to_the_same_experiment),
# so executing it again would spend ~3 of CI's 30 minutes on a repeat; its dry-run stays
# in test_dryrun.py.
PAPER_CONFIGS = [
    p for p in sorted((REPO / "configs" / "paper").glob("*.yaml")) if p.stem != "llama2-7b"
]
TABLES = (
    "speedup.csv",
    "speedup.md",
    "speedup.tex",
    "quality.csv",
    "quality.md",
    "quality.tex",
    "responses.md",
    "ablation.csv",
    "ablation.md",
    "run_info.json",
)


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_config_runs_to_its_tables_in_smoke_mode(config, tmp_path):
    import pandas as pd

    proc = micro_snakemake(tmp_path, "--config", "smoke=true", config=config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    paper = yaml.safe_load(config.read_text())
    (name,) = paper["models"]
    model = f"{name}-smoke"
    tables = tmp_path / "results" / "tables"
    for table in TABLES:
        assert (tables / table).is_file(), table
    for figure in ("speedup.png", "quality.png", "layer_load.png"):
        assert (tmp_path / "results" / "figures" / figure).is_file(), figure
    speed = pd.read_csv(tables / "speedup.csv")
    # every row says it is a smoke run; the paper's benchmarks, every method
    assert set(speed["model"]) == {model}
    assert set(speed["bench"]) == set(paper["data"]["eval"])
    assert {"ar", "eagle2", "eagle2_dllm", "spadec_eagle2"} <= set(speed["method"])
    assert json.loads((tables / "run_info.json").read_text())["settings"]["smoke"] is True
    # the paper's tree and K, recorded in the settings snapshot with the smoke mark
    results = tmp_path / "results" / model
    decode = json.loads((results / "config" / "eagle.decode.json").read_text())
    assert (decode["total_tokens"], decode["depth"], decode["top_k"], decode["smoke"]) == (
        60,
        5,
        10,
        True,
    )
    assert json.loads((results / "config" / "predictor.data.json").read_text())["layer_k"] == 6
    # the base is the config's family, with the configured chat template
    base = json.loads((results / "base" / "config.json").read_text())
    family = "qwen2" if "qwen" in name else "llama"
    assert base["model_type"] == family and base["num_hidden_layers"] == 8
    template = json.loads((results / "base" / "tokenizer_config.json").read_text())
    assert "### Instruction" in (
        template.get("chat_template") or (results / "base" / "chat_template.jinja").read_text()
    )
