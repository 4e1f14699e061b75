"""Bad input at the command line and in artefacts: one line naming it, exit 2, no traceback.

Artefacts are tiny synthetic ones (a 6-layer h64 dense target, a D-LLM of the same
shape, their EAGLE heads, a predictor), copied and broken per test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from spadec.base.tokenizer import train_bpe_tokenizer
from spadec.cli import main
from spadec.decoding.context import PromptTooLongError, check_prompt_fits
from spadec.eagle.head import new_head, save_head
from spadec.eval.bench import evaluate_bench
from spadec.job_errors import failure_line, last_error_line, rule_and_log
from spadec.predictor.model import AcceptancePredictor, save_predictor
from tests.conftest import REPO
from tests.unit.test_dllm_model import SHAPE as DLLM_SHAPE
from tests.unit.test_dllm_model import make as make_dllm

CONTEXT = 64  # the targets' max_position_embeddings: a short prompt can exceed it
DENSE = {k: v for k, v in DLLM_SHAPE.items() if k != "router_hidden"}
DENSE["max_position_embeddings"] = CONTEXT
TREE = ["--total-tokens", "4", "--depth", "1", "--top-k", "2"]


def _save_model(model, tokenizer, out: Path) -> Path:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _head_for(config_overrides: dict, out: Path) -> Path:
    """A head built for a dense model of another shape (what a wrong --head-* gives)."""
    torch.manual_seed(0)
    save_head(new_head(LlamaForCausalLM(LlamaConfig(**{**DENSE, **config_overrides}))), out)
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artefacts")
    tok = train_bpe_tokenizer(["some text to learn from"] * 30, vocab_size=280)
    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(**DENSE)).eval()
    dllm = make_dllm(dtype=torch.float32, max_position_embeddings=CONTEXT)
    paths = {
        "base": _save_model(dense, tok, root / "base"),
        "dllm": _save_model(dllm, tok, root / "dllm"),
        "head_dense": root / "head_dense",
        "head_dllm": root / "head_dllm",
        "predictor": root / "predictor",
    }
    save_head(new_head(dense), paths["head_dense"])
    save_head(new_head(dllm), paths["head_dllm"])
    save_predictor(AcceptancePredictor(DENSE["hidden_size"], 2, True), paths["predictor"])
    return paths


@pytest.fixture
def broken(good, tmp_path):
    """copy(name) -> a private copy of one good artefact, to break."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(good[name], tmp_path / name))

    return copy


def _args(good: dict, method: str = "eagle2", **paths) -> list[str]:
    """`generate` arguments for `method`, with `paths` (flag name -> dir) replacing the
    good artefacts."""
    flags = {
        "base": good["base"],
        "head-dense": good["head_dense"],
        "dllm": good["dllm"],
        "head-dllm": good["head_dllm"],
        "predictor": good["predictor"],
    }
    flags.update({k.replace("_", "-"): v for k, v in paths.items()})
    out = ["generate", "--method", method, "--prompt", "Hello there", "--max-new-tokens", "4"]
    for flag, path in flags.items():
        out += [f"--{flag}", str(path)]
    return out + TREE


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert exit 2 and one stderr line; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("spadec generate:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- artefacts -------------------------------------------------------------------------


def test_garbage_model_config_is_named(capsys, good, broken):
    base = broken("base")
    (base / "config.json").write_text("{not json")
    line = _refused(capsys, _args(good, "ar", base=base))
    assert str(base / "config.json") in line and "not valid JSON" in line


def test_directory_without_config_is_named(capsys, good, broken):
    base = broken("base")
    (base / "config.json").unlink()
    line = _refused(capsys, _args(good, "ar", base=base))
    assert str(base) in line and "no config.json" in line


def test_truncated_model_weights_are_named(capsys, good, broken):
    base = broken("base")
    _truncate(base / "model.safetensors")
    line = _refused(capsys, _args(good, "ar", base=base))
    assert str(base / "model.safetensors") in line and "unreadable safetensors" in line


def test_weights_missing_a_tensor_are_refused_not_initialised(capsys, good, broken):
    base = broken("base")
    state = load_file(base / "model.safetensors")
    del state["model.norm.weight"]
    save_file(state, base / "model.safetensors", metadata={"format": "pt"})
    line = _refused(capsys, _args(good, "ar", base=base))
    assert str(base) in line and "model.norm.weight" in line


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ({"hidden_size": 32, "intermediate_size": 64}, "head hidden size 32"),
        ({"vocab_size": 280}, "head vocabulary 280"),
    ],
)
def test_head_of_another_model_is_refused(capsys, good, tmp_path, shape, expected):
    head = _head_for(shape, tmp_path / "head")
    line = _refused(capsys, _args(good, head_dense=head))
    target = DENSE["hidden_size"] if "hidden" in expected else DENSE["vocab_size"]
    assert str(head) in line and f"{expected} does not match the target's {target}" in line


@pytest.mark.parametrize("damage", ["truncate", "garbage_config"])
def test_damaged_head_is_named(capsys, good, broken, damage):
    head = broken("head_dense")
    if damage == "truncate":
        _truncate(head / "model.safetensors")
        expected = str(head / "model.safetensors")
    else:
        (head / "config.json").write_text("[1, 2")
        expected = str(head / "config.json")
    assert expected in _refused(capsys, _args(good, head_dense=head))


def test_predictor_of_another_width_is_refused(capsys, good, tmp_path):
    save_predictor(AcceptancePredictor(32, 2, True), tmp_path / "pred")
    line = _refused(capsys, _args(good, "spadec_eagle2", predictor=tmp_path / "pred"))
    assert str(tmp_path / "pred") in line
    assert "predictor hidden size 32 does not match the target's 64" in line


def test_predictor_layer_beyond_the_target_is_refused(capsys, good, tmp_path):
    layers = DLLM_SHAPE["num_hidden_layers"]
    save_predictor(AcceptancePredictor(64, layers, True), tmp_path / "pred")
    line = _refused(capsys, _args(good, "spadec_eagle2", predictor=tmp_path / "pred"))
    assert f"layer_k {layers} must be below the target's {layers} layers" in line


def test_damaged_predictor_is_named(capsys, good, broken):
    pred = broken("predictor")
    _truncate(pred / "model.safetensors")
    line = _refused(capsys, _args(good, "spadec_eagle2", predictor=pred))
    assert str(pred / "model.safetensors") in line


def test_refusal_is_one_line_without_traceback_in_a_real_process(good, broken):
    base = broken("base")
    (base / "config.json").write_text("")
    cmd = [sys.executable, "-m", "spadec.cli", *_args(good, "ar", base=base)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"spadec generate: {base / 'config.json'}: not valid JSON" in proc.stderr


# --- numeric arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-new-tokens", "0"),
        ("--temperature", "-0.5"),
        ("--temperature", "nan"),
        ("--seed", "-1"),
        ("--depth", "-1"),
        ("--top-k", "0"),
        ("--total-tokens", "1"),
        ("--max-new-tokens", "ten"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--method", "ar", "--prompt", "x", flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert f"argument {flag}" in err and "usage:" in err and "Traceback" not in err


# --- prompt length -----------------------------------------------------------------------


def test_prompt_fit_limit_counts_the_tokens_to_generate_and_the_tree():
    check_prompt_fits(56, 8, 64)
    with pytest.raises(PromptTooLongError, match="prompt is 57 tokens.*allows at most 56"):
        check_prompt_fits(57, 8, 64)
    with pytest.raises(PromptTooLongError, match="2 deep.*allows at most 54"):
        check_prompt_fits(55, 8, 64, tree_room=2)
    check_prompt_fits(10_000, 8, None)  # no known context: nothing to check


@pytest.mark.parametrize("method", ["ar", "eagle2"])
def test_prompt_longer_than_the_context_is_refused(capsys, good, method):
    argv = _args(good, method)
    argv[argv.index("--prompt") + 1] = "a b c d e f g " * 8
    line = _refused(capsys, argv)
    room = 4 + (1 if method == "eagle2" else 0)  # max-new-tokens 4, tree depth 1
    assert "prompt is" in line and f"context of {CONTEXT} allows at most {CONTEXT - room}" in line


def test_eval_refuses_a_long_prompt_before_any_run(good, tmp_path):
    (tmp_path / "eval_long.jsonl").write_text('{"id": 1, "turns": ["' + "a b c " * 30 + '"]}\n')
    speed = {
        "methods": ["ar"],
        "compare_ats_modes": False,
        "max_new_tokens": 8,
        "temperature": 0.0,
        "warmup_prompts": 1,
        "seed": 0,
    }
    decode = {"dtype": "float32", "total_tokens": 4, "depth": 1, "top_k": 2, "draft_vocab": None}
    ats = {"ats_mode": "prune", "acc_length": 3, "prune_scale": 1.0}
    paths = {"dense": good["base"], "data": tmp_path}
    with pytest.raises(PromptTooLongError, match="benchmark long, prompt 1: prompt is"):
        evaluate_bench("m", "long", speed, decode, ats, paths)


# --- timing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "calls", "label"), [([], 2, "after one warm-up call"), (["--no-warmup"], 1, "cold")]
)
def test_generate_times_a_warm_call_and_says_so(capsys, monkeypatch, good, flag, calls, label):
    import spadec.eval.methods as methods

    seen = []
    real = methods.run_method

    def counting(*args, **kwargs):
        seen.append(args[3])  # max_new_tokens
        return real(*args, **kwargs)

    monkeypatch.setattr(methods, "run_method", counting)
    assert main([*_args(good, "eagle2"), "--depth", "0", *flag]) == 0
    err = capsys.readouterr().err
    assert len(seen) == calls and f"tokens/s ({label}" in err


# --- the jobs' failure line (spadec.job_errors) -------------------------------------------

TRACEBACK_LOG = """\
12:00:01 INFO spadec.eagle.train: step 2
Traceback (most recent call last):
  File "workflow_scripts/train_eagle.py", line 30, in <module>
    train(settings)
spadec.eagle.head.HeadError: results/m/eagle/dense/head/config.json: not valid JSON
"""
TORCHRUN_LOG = """\
[rank0]: Traceback (most recent call last):
[rank0]: ValueError: shard 3 is empty
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train_eagle.py FAILED
"""


def test_last_error_line_finds_the_cause():
    assert last_error_line(TRACEBACK_LOG).startswith("spadec.eagle.head.HeadError: results/")
    assert last_error_line(TORCHRUN_LOG) == "ValueError: shard 3 is empty"
    assert last_error_line("loading\nerror: disk full\ndone\n") == "error: disk full"
    assert last_error_line("just stopped\n") == "just stopped"
    assert last_error_line("\n \n") is None


def test_failure_line_names_the_rule_and_the_log(tmp_path):
    log = tmp_path / "train_eagle_dense.log"
    log.write_text(TRACEBACK_LOG)
    command = (
        '"$SPADEC_PY" -m spadec.launch --gpus 0 -- $SPADEC_SCRIPTS/train_eagle.py'
        f" --config c.json --out o > {log} 2>&1"
    )
    assert rule_and_log(command) == ("train_eagle", str(log))
    line = failure_line(command)
    assert line.startswith("ERROR in rule train_eagle: spadec.eagle.head.HeadError: ")
    assert line.endswith(f"(log: {log})") and "\n" not in line


def test_every_rule_script_is_named_after_its_rule():
    """job_errors reads the rule off the script's name: keep them equal."""
    import re

    for smk in (REPO / "rules").glob("*.smk"):
        for rule, body in re.findall(
            r"^rule (\w+):\n(.*?)(?=^rule |\Z)", smk.read_text(), re.M | re.S
        ):
            scripts = re.findall(r'script=script\("(\w+)"\)', body)
            assert scripts in ([], [rule]), f"{smk.name}: rule {rule} runs {scripts}"
