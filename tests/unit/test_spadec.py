"""SpaDec: ATS on hand-built trees, the predictor (metrics, import, data), and the
spadec_eagle2 loop (prune mode lossless vs greedy dllm; steer mode runs and is measured)."""

from __future__ import annotations

import math

import pytest
import torch

from spadec.decoding.ats import depth_weights, select
from spadec.decoding.autoregressive import autoregressive_decode
from spadec.decoding.draft import TreeParams
from spadec.decoding.eagle2 import eagle2_decode, speculative_decode
from spadec.decoding.spadec import spadec_verify_step
from spadec.decoding.tree import DraftTree, compile_tree
from spadec.eagle.head import new_head
from spadec.predictor.data import collect_nodes, read_shards, write_shard
from spadec.predictor.metrics import calibration, roc_auc
from spadec.predictor.model import (
    AcceptancePredictor,
    PredictorError,
    import_published,
    load_predictor,
)
from tests.unit.test_dllm_model import make as make_dllm
from tests.unit.test_eagle_decode import OracleDrafter, prompt

#        0
#      /   \
#     1     2
#    / \     \
#   3   4     5
#   |
#   6
TREE = compile_tree(
    DraftTree(torch.tensor([9, 1, 2, 3, 4, 5, 6]), torch.tensor([-1, 0, 0, 1, 1, 2, 3]))
)


def test_depth_weights_follow_the_published_schedule():
    w = depth_weights(torch.arange(7))
    expected = [
        0,
        math.log(2),
        math.log(3),
        1.0,
        1 / math.cosh(1),
        1 / math.cosh(2),
        1 / math.cosh(3),
    ]
    torch.testing.assert_close(w, torch.tensor(expected), rtol=0, atol=1e-6)


def test_ats_prunes_below_mean_subtrees_and_picks_the_weighted_path():
    p = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.95, 0.7])  # mean 0.55; root stays anyway
    sel = select(TREE, p)
    # node 2 (0.2) is below the mean: it goes with its child 5 (0.95); node 4 (0.3) too.
    assert sel.keep.tolist() == [True, True, False, True, False, False, True]
    # surviving paths: 0-1-3-6 (0.9 ln2 + 0.8 ln3 + 0.7 * 1) wins over 0-1
    assert sel.path.nonzero().flatten().tolist() == [0, 1, 3, 6]


def test_a_larger_prune_scale_keeps_a_subtree_of_fewer_nodes():
    p = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.95, 0.7])  # mean 0.55
    published = select(TREE, p)
    assert torch.equal(select(TREE, p, prune_scale=1.0).keep, published.keep)
    # 1.5 x mean = 0.825: node 3 (0.8) goes with its child 6; 1 (0.9) stays
    tight = select(TREE, p, prune_scale=1.5)
    assert tight.keep.tolist() == [True, True, False, False, False, False, False]
    assert tight.path.nonzero().flatten().tolist() == [0, 1]
    # a scale no node reaches leaves the root alone; a small one keeps the whole tree
    assert select(TREE, p, prune_scale=10.0).keep.nonzero().flatten().tolist() == [0]
    assert select(TREE, p, prune_scale=0.1).keep.all()


def test_ats_path_prefers_depth_weighted_mass_over_depth():
    p = torch.tensor([0.5, 0.6, 0.99, 0.6, 0.6, 0.6, 0.58])  # mean ~0.64: only node 2 survives
    sel = select(TREE, p)
    assert sel.keep.nonzero().flatten().tolist() == [0, 2]
    assert sel.path.nonzero().flatten().tolist() == [0, 2]


def test_auc_and_calibration_on_hand_made_scores():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)  # tie
    assert math.isnan(roc_auc(scores, torch.zeros(4)))
    cal = calibration(torch.tensor([0.05, 0.05, 0.95, 0.95]), torch.tensor([0, 0, 1, 1]))
    assert cal["ece"] == pytest.approx(0.05)


def test_published_predictor_weights_import(tmp_path):
    torch.manual_seed(0)
    state = {
        "linear.weight": torch.randn(1, 16).bfloat16(),
        "linear.bias": torch.randn(1).bfloat16(),
    }
    torch.save(state, tmp_path / "logistic_regression_model.pth")
    model = import_published(tmp_path / "logistic_regression_model.pth", 6, tmp_path / "pred")
    again = load_predictor(tmp_path / "pred")
    h = torch.randn(5, 16)
    expected = torch.sigmoid(h @ state["linear.weight"].float()[0] + state["linear.bias"].float())
    torch.testing.assert_close(again(h), expected)
    assert again.layer_k == 6 and torch.equal(model(h), again(h))
    torch.save({"weight": torch.ones(3)}, tmp_path / "bad.pth")
    with pytest.raises(PredictorError, match=r"linear\.weight \[1, d\]"):
        import_published(tmp_path / "bad.pth", 6, tmp_path / "x")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(PredictorError, match="not a readable"):
        import_published(tmp_path / "junk.pth", 6, tmp_path / "x")


def _predictor(model, layer_k=3, seed=0, draft=False):
    torch.manual_seed(seed)
    pred = AcceptancePredictor(model.config.hidden_size, layer_k, draft).double()
    torch.nn.init.normal_(pred.linear.weight, std=0.3)
    return pred


@pytest.mark.parametrize(("variant", "draft"), [("llama-gqa", False), ("qwen2", True)])
def test_spadec_prune_mode_equals_greedy_dllm(variant, draft):
    model = make_dllm(variant)
    ids = prompt(vocab=model.config.vocab_size)
    ref = autoregressive_decode(model, ids, 40)
    verify = spadec_verify_step(_predictor(model, draft=draft), "prune")
    head = new_head(model).double().eval()
    random_head = eagle2_decode(model, head, ids, TreeParams(12, 3, 3), 40, verify_step=verify)
    assert random_head.output_ids == ref.output_ids
    oracle = OracleDrafter(ref.output_ids + [0] * 8, ids.shape[1], model.config.vocab_size)
    perfect = speculative_decode(model, oracle, ids, 40, verify_step=verify)
    assert perfect.output_ids == ref.output_ids
    # pruning really removed nodes from some verification batches
    assert perfect.extra["verified_tokens_per_step"] < 1 + 3 * 4
    # a stricter prune verifies fewer nodes and is just as lossless
    strict = spadec_verify_step(_predictor(model, draft=draft), "prune", prune_scale=1.5)
    tight = eagle2_decode(model, head, ids, TreeParams(12, 3, 3), 40, verify_step=strict)
    assert tight.output_ids == ref.output_ids
    assert tight.extra["verified_tokens_per_step"] < random_head.extra["verified_tokens_per_step"]


def test_steer_mode_lets_only_the_selected_path_vote():
    """A layer with a wanting token off the selected path is skipped in steer mode and
    run in prune/plain verification (steer is lossy by design: its match rate is measured
    by the evaluation, not asserted)."""
    from spadec.decoding.verify import verify_all_layers
    from spadec.runtime.cache import LayerSkipCache
    from spadec.runtime.forward import commit, finish_pass, run_layers, start_chain

    model = make_dllm("llama-gqa")
    ids = prompt(vocab=model.config.vocab_size)
    num_layers = model.config.num_hidden_layers
    runs = {}
    for name in ("plain", "steer"):
        cache = LayerSkipCache.empty(num_layers)
        tp = run_layers(model, start_chain(model, ids[0], cache), cache, 0, num_layers)
        finish_pass(model, tp)
        commit(cache, tp, torch.arange(ids.shape[1]))
        if name == "plain":
            tp = verify_all_layers(model, TREE, cache)
        else:
            tp = spadec_verify_step(_predictor(model), "steer")(model, TREE, cache)
        runs[name] = tp.layer_ran
    assert all(s <= p for s, p in zip(runs["steer"], runs["plain"], strict=True))


def test_bad_mode_and_layer_k_are_rejected():
    model = make_dllm("llama-gqa")
    with pytest.raises(ValueError, match="unknown ATS mode"):
        spadec_verify_step(_predictor(model), "both")
    verify = spadec_verify_step(_predictor(model, layer_k=99), "prune")
    head = new_head(model).double().eval()
    with pytest.raises(ValueError, match="layer_k 99"):
        eagle2_decode(
            model,
            head,
            prompt(vocab=model.config.vocab_size),
            TreeParams(8, 2, 2),
            8,
            verify_step=verify,
        )


def test_predictor_data_labels_the_accepted_path(tmp_path):
    model = make_dllm("llama-gqa")
    head = new_head(model).double().eval()
    prompts = [prompt(vocab=model.config.vocab_size, seed=s)[0].tolist() for s in (1, 2)]
    params = TreeParams(10, 2, 3)
    data = collect_nodes(model, head, prompts, params, 3, 12, None)
    n = data["labels"].numel()
    assert data["features"].shape == (n, model.config.hidden_size)
    assert int(data["depth"].min()) >= 1  # roots left out
    assert set(data["sample"].tolist()) == {0, 1}
    assert torch.equal(data["draft"][:, 0], data["depth"].float())  # depth, then log-probs
    assert bool((data["draft"][:, 1] <= 0).all()) and bool((data["draft"][:, 2] <= 0).all())
    # per step: nodes on the accepted path form a chain 1..a (one node per depth)
    for s in (0, 1):
        for step in set(data["step"][data["sample"] == s].tolist()):
            sel = (data["sample"] == s) & (data["step"] == step)
            depths = data["depth"][sel][data["labels"][sel].bool()].tolist()
            assert sorted(depths) == list(range(1, len(depths) + 1))
    manifest = write_shard(data, tmp_path / "shard_0", {"shard": 0})
    assert manifest["nodes"] == n
    back = read_shards([tmp_path / "shard_0"])
    assert torch.equal(back["labels"], data["labels"])


def _calibrate_routers(model, ids, share):
    """Shift each dynamic router's execute bias so that `share` of the tokens in `ids`
    execute its layer: decisions that differ from token to token (trained tiny routers
    skip the same layers for every token instead)."""
    for i in model.config.dynamic_layers():
        router = model.model.layers[i].router
        seen: list[torch.Tensor] = []
        hook = router.register_forward_hook(lambda m, a, out, seen=seen: seen.append(out.detach()))
        with torch.no_grad():
            model(ids)
        hook.remove()
        margin = (seen[0][..., 1] - seen[0][..., 0]).flatten().double()
        router.linear_2.bias.data[1] -= torch.quantile(margin, 1 - share).to(model.dtype)


def test_with_token_dependent_routers_prune_lowers_the_layer_load():
    """SpaDec's premise: when routers disagree from token to token, a layer runs in plain
    tree verification as soon as any of the verified tokens wants it (layer load near 1),
    and verifying only the nodes ATS keeps lowers it, still losslessly."""
    model = make_dllm("llama-gqa")
    ids = prompt(vocab=model.config.vocab_size)
    calib = torch.randint(
        3, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(5)
    )
    _calibrate_routers(model, torch.cat([ids, calib], 1), share=0.3)
    ref = autoregressive_decode(model, ids, 40)
    rates = ref.extra["layer_execution_rate"][model.config.dynamic_start_layer :]
    assert all(0.05 < r < 0.6 for r in rates), rates  # per-token decisions differ

    def oracle():
        return OracleDrafter(ref.output_ids + [0] * 8, ids.shape[1], model.config.vocab_size)

    plain = speculative_decode(model, oracle(), ids, 40)
    pruned = speculative_decode(
        model, oracle(), ids, 40, verify_step=spadec_verify_step(_predictor(model), "prune")
    )
    assert plain.output_ids == pruned.output_ids == ref.output_ids
    assert plain.extra["layer_load_share"] > 0.95  # any of 13 tokens wants every layer
    assert pruned.extra["verified_tokens_per_step"] < plain.extra["verified_tokens_per_step"] / 2
    assert pruned.extra["layer_load_share"] < plain.extra["layer_load_share"] - 0.15
