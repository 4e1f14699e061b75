"""Importing published Medusa heads: .pt and .safetensors, Medusa-1 and Medusa-2 format,
heads and blocks counted from the tensor names, malformed files refused in one line."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

from spadec.artefacts import ArtefactError
from spadec.medusa.heads import load_heads
from spadec.medusa.importer import MedusaImportError, import_medusa, main

D, V = 16, 40


def _published(num_heads: int, num_blocks: int, own: bool, seed: int = 0) -> dict:
    """A state dict in the published layout (fp16, as the released heads)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for h in range(num_heads):
        for b in range(num_blocks):
            state[f"{h}.{b}.linear.weight"] = torch.randn(D, D, generator=gen).half()
            state[f"{h}.{b}.linear.bias"] = torch.randn(D, generator=gen).half()
        if own:
            state[f"{h}.{num_blocks}.weight"] = torch.randn(V, D, generator=gen).half()
    return state


def _write(state: dict, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)


def _one_line(err: BaseException, path) -> None:
    text = str(err)
    assert "\n" not in text, text
    assert str(path) in text, text


def _same(heads, state: dict) -> None:
    ours = heads.state_dict()
    assert set(ours) == set(state)
    for name, tensor in state.items():
        assert torch.equal(ours[name], tensor.float()), name


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize(("num_heads", "num_blocks"), [(3, 1), (2, 2)])
def test_medusa_1_heads_counted_from_names(tmp_path, caplog, suffix, num_heads, num_blocks):
    state = _published(num_heads, num_blocks, own=True)
    src = tmp_path / "pub" / f"medusa_lm_head{suffix}"
    _write(state, src)
    # the published config.json may name another count: the tensors win
    (src.parent / "config.json").write_text(json.dumps({"medusa_num_heads": 5}))
    caplog.set_level(logging.WARNING, logger="spadec.medusa.importer")
    info = import_medusa(src.parent, tmp_path / "heads")  # a folder: its file is found
    assert info["format"] == "medusa-1" and info["config_json_num_heads"] == 5
    assert (info["num_heads"], info["num_blocks"]) == (num_heads, num_blocks)
    assert (info["hidden_size"], info["vocab_size"]) == (D, V)
    assert "medusa_num_heads 5" in caplog.text
    heads = load_heads(tmp_path / "heads")
    assert heads.config.own_projection and heads.config.num_heads == num_heads
    _same(heads, state)
    assert (tmp_path / "heads" / "run_info.json").is_file()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_medusa_2_heads_use_the_target_vocabulary(tmp_path, suffix):
    state = _published(4, 1, own=False)
    src = tmp_path / f"medusa_lm_head{suffix}"
    _write(state, src)
    with pytest.raises(MedusaImportError, match="--target") as err:
        import_medusa(src, tmp_path / "no")
    _one_line(err.value, src)
    assert not (tmp_path / "no").exists()
    target = tmp_path / "target"
    LlamaConfig(vocab_size=V, hidden_size=D, num_attention_heads=2).save_pretrained(target)
    info = import_medusa(src, tmp_path / "heads", target=target)
    assert info["format"] == "medusa-2" and info["num_heads"] == 4 and info["vocab_size"] == V
    heads = load_heads(tmp_path / "heads")
    assert not heads.config.own_projection
    _same(heads, state)
    lm_head = torch.randn(V, D)
    assert heads(torch.randn(3, D), lm_head=lm_head).shape == (4, 3, V)
    # an explicit vocabulary works as well
    assert import_medusa(src, tmp_path / "h2", vocab_size=V)["vocab_size"] == V


def test_medusa_1_vocabulary_must_match_a_given_target(tmp_path):
    src = tmp_path / "medusa_lm_head.pt"
    _write(_published(2, 1, own=True), src)
    with pytest.raises(MedusaImportError, match="vocabulary is 41") as err:
        import_medusa(src, tmp_path / "heads", vocab_size=V + 1)
    _one_line(err.value, src)


class _Exploit:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def _malformed(tmp_path):
    good = _published(2, 1, own=True)
    no_bias = {k: v for k, v in good.items() if k != "1.0.linear.bias"}
    other_width = {**good, "1.0.linear.weight": torch.randn(D + 1, D + 1).half()}
    other_vocab = {**good, "1.1.weight": torch.randn(V + 2, D).half()}
    mixed = {k: v for k, v in good.items() if k != "1.1.weight"}
    gap = {k.replace("1.", "2.", 1): v for k, v in good.items()}  # heads 0 and 2
    stray = {**good, "lm_head.weight": torch.randn(V, D)}
    ints = {**good, "0.0.linear.bias": torch.zeros(D, dtype=torch.long)}
    cases = {
        "not a dict": ([torch.randn(2)], ".pt", "expected a state dict"),
        "pickled code": ({"0.0.linear.weight": _Exploit()}, ".pt", "other than tensors"),
        "non-tensor": ({"0.0.linear.weight": 3}, ".pt", "not a named tensor"),
        "missing bias": (no_bias, ".pt", "1.0.linear.bias missing"),
        "inconsistent width": (other_width, ".safetensors", "1.0.linear has weight"),
        "inconsistent vocab": (other_vocab, ".pt", "1.1.weight has shape"),
        "mixed formats": (mixed, ".pt", "heads must agree"),
        "missing head": (gap, ".pt", "head 1 missing"),
        "stray tensor": (stray, ".safetensors", "unexpected tensor 'lm_head.weight'"),
        "integer tensor": (ints, ".safetensors", "not a float tensor"),
        "empty": ({}, ".pt", "no tensors"),
    }
    for i, (name, (obj, suffix, message)) in enumerate(cases.items()):
        path = tmp_path / f"case{i}" / f"medusa_lm_head{suffix}"
        path.parent.mkdir()
        if suffix == ".safetensors":
            save_file(obj, path)
        else:
            torch.save(obj, path)
        yield name, path, message
    for name, suffix, payload, message in (
        ("garbage", ".pt", b"not a torch file at all", "unreadable torch file"),
        ("truncated", ".safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{", "unreadable"),
        ("wrong type", ".npz", b"", "unknown heads file type"),
    ):
        path = tmp_path / name / f"medusa_lm_head{suffix}"
        path.parent.mkdir()
        path.write_bytes(payload)
        yield name, path, message


def test_malformed_files_fail_in_one_line_naming_the_file(tmp_path, capsys):
    for name, path, message in _malformed(tmp_path):
        with pytest.raises(ArtefactError) as err:
            import_medusa(path, tmp_path / "out", vocab_size=V)
        assert message in str(err.value), (name, str(err.value))
        _one_line(err.value, path)
        assert not (tmp_path / "out").exists(), name
    assert "pickle code ran" not in capsys.readouterr().out
    with pytest.raises(MedusaImportError, match="no medusa_lm_head") as err:
        import_medusa(tmp_path, tmp_path / "out")
    _one_line(err.value, tmp_path)
    with pytest.raises(MedusaImportError, match="file not found"):
        import_medusa(tmp_path / "nope.pt", tmp_path / "out")


def test_main_exit_codes(tmp_path, capsys):
    src = tmp_path / "medusa_lm_head.safetensors"
    _write(_published(2, 1, own=True), src)
    assert main([str(src), "--out", str(tmp_path / "heads")]) == 0
    assert json.loads(capsys.readouterr().out)["num_heads"] == 2
    bad = tmp_path / "bad" / "medusa_lm_head.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"junk")
    assert main([str(bad), "--out", str(tmp_path / "h2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spadec import-medusa: ") and str(bad) in err and "\n" not in err
