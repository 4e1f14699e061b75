"""Medusa decoding: the static tree from a choices list, lossless greedy decoding on dense
and D-LLM targets (random heads, oracle heads, SpaDec's prune step), the typical
acceptance rule (greedy at T = 0, lossy above), and the sampled output distribution."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from spadec.decoding.accept import accept_greedy, accept_typical, typical_floor
from spadec.decoding.autoregressive import autoregressive_decode
from spadec.decoding.loop import speculative_decode
from spadec.decoding.medusa import MedusaDrafter, MedusaTree, head_rank_accuracy, medusa_decode
from spadec.decoding.medusa_trees import (
    CHAIN_4,
    MC_SIM_7B_63,
    SMALL_10,
    SMALL_16,
    TREES,
    ChoicesError,
    normalize_choices,
    prior_acceptance,
    ranks_per_depth,
    sparse_tree,
)
from spadec.decoding.spadec import spadec_verify_step
from spadec.decoding.tree import DraftTree, compile_tree
from spadec.predictor.model import AcceptancePredictor
from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.forward import chain_forward
from tests.unit.test_dllm_model import make as make_dllm
from tests.unit.test_eagle_decode import SHAPE, dense, prompt

# --- stand-in heads ------------------------------------------------------------------


class RandomHeads(nn.Module):
    """Medusa-shaped heads (x + SiLU(Linear(x)), then the target's LM head), random."""

    def __init__(self, hidden: int, num_heads: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_heads))

    def forward(self, features, lm_head):
        x = features.to(self.blocks[0].weight.dtype)
        return torch.stack([lm_head(x + nn.functional.silu(b(x))) for b in self.blocks])


class OracleHeads:
    """Heads that know the target's greedy continuation: they find the committed token's
    position by its feature (nearest row of the reference features) and rank the true
    future token first - or, at some positions, second behind a decoy, so that accepted
    paths also take rank-1 branches."""

    def __init__(self, model, ids, reference, vocab, num_heads=4, decoys=0.3, seed=0):
        seq = torch.cat([ids[0], torch.tensor(reference)])
        cache = LayerSkipCache.empty(len(model.model.layers))
        with torch.no_grad():
            _, self.features, _ = chain_forward(model, seq, cache)
        padded = seq.tolist() + [0] * (num_heads + 2)
        gen = torch.Generator().manual_seed(seed)
        rng = random.Random(seed)
        self.logits = torch.randn(seq.numel(), num_heads, vocab, generator=gen, dtype=torch.float64)
        for t in range(seq.numel()):
            for i in range(num_heads):
                true = padded[t + 2 + i]
                self.logits[t, i, true] = 20.0
                if rng.random() < decoys:
                    self.logits[t, i, (true + 1) % vocab] = 21.0

    def __call__(self, features, lm_head):
        dist = (features.double() - self.features.double()).norm(dim=-1)  # [n]
        t = int(dist.argmin())
        # fp32 rotary tables: tree and chain passes agree to ~1e-6, positions differ by O(1)
        assert float(dist[t]) < 1e-4, "a feature the reference run never produced"
        return self.logits[t][:, None]  # [heads, 1, V]


def _oracle(model, ids, ref, **kw):
    return OracleHeads(model, ids, ref.output_ids, model.config.vocab_size, **kw)


def _predictor(model, layer_k=3, draft=True):
    torch.manual_seed(0)
    pred = AcceptancePredictor(model.config.hidden_size, layer_k, draft).double()
    nn.init.normal_(pred.linear.weight, std=0.3)
    return pred


# --- the static tree -------------------------------------------------------------------


def test_small_tree_has_the_choices_parents_and_depths():
    t = MedusaTree.build(SMALL_10)
    # node order: root, then by (length, tuple)
    assert t.choices == SMALL_10 == normalize_choices(reversed(SMALL_10))
    assert t.parents.tolist() == [-1, 0, 0, 0, 1, 1, 2, 4, 4, 5, 7]
    assert t.depth.tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    assert t.size == 11 and t.top_k == 3 and ranks_per_depth(SMALL_10) == [3, 2, 2, 1]


def test_mc_sim_7b_63_is_the_published_tree():
    t = MedusaTree.build(MC_SIM_7B_63)
    assert t.size == 64 and t.max_depth == 4
    assert Counter(t.depth.tolist()) == {0: 1, 1: 10, 2: 28, 3: 23, 4: 2}
    assert ranks_per_depth(MC_SIM_7B_63) == [10, 10, 10, 2]
    c = compile_tree(DraftTree(torch.arange(64), t.parents))
    assert c.retrieve.shape == (42, 5)  # 42 leaves
    assert torch.equal(c.depth, t.depth)


def test_fill_reads_each_nodes_token_and_cumulative_score_from_the_heads():
    torch.manual_seed(0)
    head_logits = torch.randn(5, 40)  # more heads than the tree is deep: the rest unused
    t = MedusaTree.build(SMALL_16)
    tree = t.fill(7, head_logits)
    logp = torch.log_softmax(head_logits, dim=-1)
    order = logp.argsort(dim=-1, descending=True)
    assert tree.tokens[0] == 7 and tree.scores[0] == 0
    for node, choice in enumerate(t.choices, start=1):
        tokens = [int(order[d, r]) for d, r in enumerate(choice)]
        assert int(tree.tokens[node]) == tokens[-1]
        expected = sum(float(logp[d, tok]) for d, tok in enumerate(tokens))
        assert float(tree.scores[node]) == pytest.approx(expected, abs=1e-5)
        assert tree.scores[node] <= tree.scores[tree.parents[node]]  # non-increasing
    compile_tree(tree)  # valid: siblings carry different tokens
    with pytest.raises(ValueError, match="heads give 2"):
        t.fill(7, head_logits[:2])
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        MedusaTree.build(MC_SIM_7B_63).fill(7, torch.randn(4, 6))


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ([(0,), (0,)], "twice"),
        ([(0, 1)], "no parent"),
        ([(0,), (-1,)], "negative"),
        ([()], "empty"),
    ],
)
def test_malformed_choices_are_rejected(choices, message):
    with pytest.raises(ChoicesError, match=message):
        MedusaTree.build(choices)


def test_top_k_must_cover_the_ranks_used():
    assert MedusaTree.build(SMALL_10, top_k=10).top_k == 10
    with pytest.raises(ChoicesError, match="top_k 2"):
        MedusaTree.build(SMALL_10, top_k=2)


def test_sparse_tree_keeps_the_most_likely_nodes():
    acc = [[0.7, 0.2, 0.05], [0.6, 0.1], [0.5, 0.1], [0.4]]
    tree = sparse_tree(acc, 9)
    assert len(tree) == 9 and tree == normalize_choices(tree)  # parents included, sorted

    # brute force: every node's path product, the 9 best
    def value(c):
        v = 1.0
        for d, r in enumerate(c):
            v *= acc[d][r]
        return v

    every, frontier = [], [()]
    while frontier:
        node = frontier.pop()
        for r in range(len(acc[len(node)]) if len(node) < len(acc) else 0):
            every.append((*node, r))
            frontier.append((*node, r))
    best = sorted(every, key=lambda c: (-value(c), len(c), c))[:9]
    assert set(tree) == set(best)
    assert sparse_tree(acc, 1000) == normalize_choices(every)  # capped by what exists
    generated = sparse_tree(prior_acceptance(4, 4), 16)
    assert len(generated) == 16 and MedusaTree.build(generated).max_depth <= 4
    with pytest.raises(ChoicesError, match=r"\[0, 1\]"):
        sparse_tree([[1.5]], 2)


def test_head_rank_accuracy_counts_hits_per_rank():
    logits = torch.tensor([[[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]]])  # 1 head, 2 positions
    assert head_rank_accuracy(logits, torch.tensor([[0, 2]]), 2) == [[0.5, 0.5]]
    assert head_rank_accuracy(logits, torch.tensor([[1, -1]]), 2) == [[0.0, 1.0]]


def test_every_named_tree_builds():
    for name, choices in TREES.items():
        t = MedusaTree.build(choices)
        assert t.size == len(choices) + 1, name
    assert MedusaTree.build(CHAIN_4).parents.tolist() == [-1, 0, 1, 2, 3]


# --- lossless greedy decoding --------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_medusa_equals_greedy_ar(kind):
    model = dense(kind)
    ids = prompt()
    ar = autoregressive_decode(model, ids, 40)
    heads = RandomHeads(SHAPE["hidden_size"]).double().eval()
    for choices in ("mc_sim_7b_63", SMALL_10, CHAIN_4):
        assert medusa_decode(model, heads, ids, choices, 40).output_ids == ar.output_ids
    # typical acceptance is exact greedy at T = 0
    typical = medusa_decode(model, heads, ids, SMALL_16, 40, acceptance=accept_typical())
    assert typical.output_ids == ar.output_ids
    oracle = medusa_decode(model, _oracle(model, ids, ar), ids, MC_SIM_7B_63, 40)
    assert oracle.output_ids == ar.output_ids
    assert oracle.extra["tau"] > 3.5  # depth 4 + the bonus token, decoys caught by rank 1
    assert oracle.extra["draft_forwards"] == oracle.extra["steps"]  # one head run per step
    assert oracle.target_forwards < ar.target_forwards / 3


def test_oracle_paths_take_rank_one_branches():
    model = dense()
    ids = prompt()
    ar = autoregressive_decode(model, ids, 32)
    drafter = MedusaDrafter(_oracle(model, ids, ar, decoys=0.5, seed=2), model.lm_head, SMALL_16)
    seen = []

    def on_step(compiled, acc):
        seen.extend(drafter.tree.choices[int(n) - 1] for n in acc.path[1:])

    out = speculative_decode(model, drafter, ids, 32, on_step=on_step)
    assert out.output_ids == ar.output_ids
    assert any(1 in choice for choice in seen)


def test_eos_and_max_new_tokens_cut_the_output_like_ar():
    model = dense()
    ids = prompt()
    ar = autoregressive_decode(model, ids, 40)
    eos = ar.output_ids[13]
    ref = autoregressive_decode(model, ids, 40, eos_token_id=eos)
    out = medusa_decode(model, _oracle(model, ids, ar), ids, MC_SIM_7B_63, 40, eos_token_id=eos)
    assert out.output_ids == ref.output_ids
    assert (
        medusa_decode(model, _oracle(model, ids, ar), ids, SMALL_16, 11).output_ids
        == (ar.output_ids[:11])
    )


@pytest.mark.parametrize("variant", ["llama-gqa", "qwen2"])
def test_greedy_medusa_on_a_dllm_equals_greedy_dllm_with_and_without_spadec(variant):
    model = make_dllm(variant)
    ids = prompt(vocab=model.config.vocab_size)
    ref = autoregressive_decode(model, ids, 40)
    assert 0.2 < ref.extra["executed_share"] < 0.9, "the test needs real skips"
    heads = RandomHeads(model.config.hidden_size).double().eval()
    prune = spadec_verify_step(_predictor(model, draft=variant == "qwen2"), "prune")
    for verify in ({}, {"verify_step": prune}):
        assert medusa_decode(model, heads, ids, SMALL_16, 40, **verify).output_ids == ref.output_ids
        oracle = medusa_decode(model, _oracle(model, ids, ref), ids, MC_SIM_7B_63, 40, **verify)
        assert oracle.output_ids == ref.output_ids
        if verify:  # pruning dropped nodes and still accepted drafts
            assert oracle.extra["verified_tokens_per_step"] < 64
            assert oracle.extra["tau"] > 3.0
        else:
            assert oracle.extra["tau"] > 3.5


# --- typical acceptance ----------------------------------------------------------------

#        0
#      /   \
#     1     2
#     |    / \
#     3   4   5
#             |
#             6
TYPICAL_TREE = compile_tree(
    DraftTree(torch.tensor([9, 0, 1, 2, 3, 4, 5]), torch.tensor([-1, 0, 0, 1, 2, 2, 5]))
)


def _rows(*rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def test_typical_is_greedy_at_temperature_zero():
    rule = accept_typical()
    torch.manual_seed(0)
    for _ in range(20):
        logits = torch.randn(7, 6)
        logits[:, :6] += 3 * torch.randn(6)  # correlate rows so paths get accepted
        ours = rule(TYPICAL_TREE, logits, None, 0.0)
        ref = accept_greedy(TYPICAL_TREE, logits)
        assert torch.equal(ours.path, ref.path) and ours.next_token == ref.next_token


def test_typical_accepts_likely_tokens_and_rejects_unlikely_ones():
    rule = accept_typical(threshold=0.09, alpha=0.3, bonus="greedy")
    # at the root: token 0 (node 1) 0.6, token 1 (node 2) 0.02: node 1 in, node 2 out
    peaked = [0.6, 0.02, 0.1, 0.1, 0.1, 0.08]
    flat = [1 / 6] * 6  # floor min(0.09, 0.3/6 = 0.05): every token passes
    logits = _rows(peaked, flat, flat, [0.05, 0.05, 0.8, 0.04, 0.03, 0.03], flat, flat, flat)
    acc = rule(TYPICAL_TREE, logits, None, 1.0)
    assert acc.path.tolist() == [0, 1, 3] and acc.next_token == 2  # the argmax at node 3
    floor = typical_floor(logits.softmax(-1), 0.09, 0.3)
    assert float(floor[0]) < 0.09 and float(floor[1]) == pytest.approx(0.05)


def test_typical_takes_the_longest_acceptable_chain_and_respects_verification():
    rule = accept_typical(bonus="greedy")
    flat = [1 / 6] * 6
    # both root children pass; under node 2 the chain is longer (2 -> 5 -> 6)
    logits = _rows(flat, flat, flat, flat, flat, flat, flat)
    assert rule(TYPICAL_TREE, logits, None, 1.0).path.tolist() == [0, 2, 5, 6]
    # node 6 not verified: chains of 2 drafts tie (1-3, 2-4, 2-5); the likelier wins,
    # then the first in leaf order
    skipped = torch.tensor([True] * 6 + [False])
    root = [0.3, 0.5, 0.05, 0.05, 0.05, 0.05]
    logits = _rows(root, flat, flat, flat, flat, flat, flat)
    assert rule(TYPICAL_TREE, logits, skipped, 1.0).path.tolist() == [0, 2, 4]
    logits = _rows([0.5, 0.3, 0.05, 0.05, 0.05, 0.05], flat, flat, flat, flat, flat, flat)
    assert rule(TYPICAL_TREE, logits, skipped, 1.0).path.tolist() == [0, 1, 3]


def test_typical_bonus_rules():
    tree = compile_tree(DraftTree(torch.tensor([3, 5]), torch.tensor([-1, 0])))
    # node 1's token 5 is unlikely at the root: rejected; the bonus is drawn at the root
    row = [0.5, 0.3, 0.15, 0.04, 0.009, 0.001]
    logits = _rows(row, row)
    gen = torch.Generator().manual_seed(0)
    typical = Counter(
        accept_typical(bonus="typical")(tree, logits, None, 1.0, gen).next_token for _ in range(400)
    )
    floor = float(typical_floor(logits.softmax(-1), 0.09, 0.3)[0])
    assert set(typical) == {t for t, p in enumerate(row) if p > floor} == {0, 1, 2}
    full = Counter(
        accept_typical(bonus="sample")(tree, logits, None, 1.0, gen).next_token for _ in range(400)
    )
    assert 3 in full  # p = 0.04: sampled from the full distribution
    assert accept_typical(bonus="greedy")(tree, logits, None, 1.0).next_token == 0
    with pytest.raises(ValueError, match="bonus"):
        accept_typical(bonus="argmax")


def test_typical_acceptance_is_lossy():
    """A drafted token with p = 0.5 always passes the floor: it is emitted every time,
    where the target would emit it half of the time (Medusa trades exactness for
    length; `accept_lossless` is the exact rule)."""
    tree = compile_tree(DraftTree(torch.tensor([3, 0]), torch.tensor([-1, 0])))
    row = [0.5, 0.5, 0.0, 0.0]
    logits = torch.tensor([row, row]).log()
    gen = torch.Generator().manual_seed(0)
    firsts = [
        int(tree.tokens[acc.path[1]]) if acc.accepted else acc.next_token
        for acc in (accept_typical()(tree, logits, None, 1.0, gen) for _ in range(200))
    ]
    assert firsts.count(0) == 200


# --- sampling: the output is distributed as the target's --------------------------------


def test_sampled_medusa_emits_the_target_distribution():
    """T = 1, lossless acceptance: the second generated token (the first one that goes
    through the tree) has the target's marginal sum_a p(a) p(b | a)."""
    vocab = 12
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**SHAPE, "vocab_size": vocab})).double().eval()
    model.lm_head.weight.data *= 6  # sharper distributions: drafts get accepted
    ids = prompt(n=4, vocab=vocab)
    with torch.no_grad():
        p1 = model(ids).logits[0, -1].softmax(-1)
        pairs = torch.cat([ids.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
        p2 = model(pairs).logits[:, -1].softmax(-1)  # [a, b] = p(b | a)
    expected = p1 @ p2
    heads = RandomHeads(SHAPE["hidden_size"], num_heads=2, seed=1).double().eval()
    gen = torch.Generator().manual_seed(0)
    trials, counts, accepted = 1500, torch.zeros(vocab), 0
    for _ in range(trials):
        out = medusa_decode(
            model, heads, ids, [(0,), (1,), (2,), (0, 0)], 2, temperature=1.0, generator=gen
        )
        counts[out.output_ids[1]] += 1
        accepted += out.extra["accepted_lengths"][0] > 0
    assert accepted > trials / 4  # the tree's drafts really carry tokens
    torch.testing.assert_close(counts / trials, expected.float(), rtol=0, atol=0.045)


def test_the_schemas_tree_names_are_the_named_trees():
    from spadec.config import load_schema
    from spadec.decoding.medusa_trees import TREES

    schema = load_schema()
    tree = schema["$defs"]["medusa"]["properties"]["tree"]
    assert tree["enum"] == list(TREES) and tree["default"] in TREES
