"""Resumable state: only complete checkpoints with matching settings are resumed."""

from __future__ import annotations

import torch

from spadec.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint


def _state(value: float) -> dict:
    return {"w": torch.full((2, 3), value)}


def test_latest_matching_checkpoint_is_found(tmp_path):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    save_checkpoint(tmp_path, 5, _state(5.0), opt.state_dict(), "hashA")
    save_checkpoint(tmp_path, 10, _state(10.0), opt.state_dict(), "hashA", {"history": [1]})
    save_checkpoint(tmp_path, 15, _state(15.0), opt.state_dict(), "hashB")
    best = latest_checkpoint(tmp_path, "hashA")
    assert best.step == 10 and best.state["history"] == [1]
    assert torch.equal(best.model_state()["w"], torch.full((2, 3), 10.0))
    assert best.optimizer_state()["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    assert latest_checkpoint(tmp_path, "other") is None


def test_incomplete_checkpoint_is_ignored(tmp_path):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    save_checkpoint(tmp_path, 3, _state(3.0), opt.state_dict(), "h")
    partial = tmp_path / "step_9"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")  # killed before state.json
    assert latest_checkpoint(tmp_path, "h").step == 3


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, _state(step), opt.state_dict(), "h", keep=2)
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 4]


def test_tied_weights_round_trip(tmp_path):
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as in models with tie_word_embeddings
    state = {"embed.weight": emb.weight, "head.weight": head.weight}
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    save_checkpoint(tmp_path, 1, state, opt.state_dict(), "h")
    loaded = latest_checkpoint(tmp_path, "h").model_state()
    assert torch.equal(loaded["embed.weight"], loaded["head.weight"])
