"""EAGLE-2 decoding invariants: the tree compiler, lossless greedy decoding for dense and
D-LLM targets (random head, oracle head), KV compaction, sampling acceptance."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from spadec.decoding.accept import accept_greedy, accept_sampling
from spadec.decoding.autoregressive import autoregressive_decode
from spadec.decoding.draft import TreeParams, select_tree
from spadec.decoding.eagle2 import eagle2_decode, speculative_decode
from spadec.decoding.tree import DraftTree, TreeError, compile_tree
from spadec.decoding.verify import start_tree
from spadec.eagle.head import new_head
from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.forward import (
    chain_forward,
    commit,
    finish_pass,
    gate_matrix,
    run_layers,
    start_chain,
)
from tests.unit.test_dllm_model import make as make_dllm

SHAPE = dict(
    vocab_size=96,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def dense(kind="llama"):
    torch.manual_seed(0)
    cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = cls[kind]
    return model_cls(config_cls(**SHAPE)).double().eval()


def prompt(n=9, vocab=96, seed=3):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def tree(tokens, parents):
    return DraftTree(torch.tensor(tokens), torch.tensor(parents))


# --- the tree compiler -------------------------------------------------------------


def test_compiled_tree_masks_positions_and_paths():
    #        0
    #      /   \
    #     1     2
    #    / \     \
    #   3   4     5
    #   |
    #   6
    c = compile_tree(tree([9, 1, 2, 3, 4, 5, 6], [-1, 0, 0, 1, 1, 2, 3]))
    assert c.depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert c.ancestors[6].nonzero().flatten().tolist() == [0, 1, 3, 6]
    assert c.ancestors[5].nonzero().flatten().tolist() == [0, 2, 5]
    assert not c.ancestors[4, 3] and not c.ancestors[3, 4]  # siblings never see each other
    assert c.attn_bias.dtype == torch.float32  # additive float mask, never boolean
    assert c.attn_bias[6, 3] == 0 and c.attn_bias[6, 2] == torch.finfo(torch.float32).min
    assert c.retrieve.tolist() == [[0, 1, 4, -1], [0, 2, 5, -1], [0, 1, 3, 6]]


def test_single_node_tree_is_just_the_root():
    c = compile_tree(tree([4], [-1]))
    assert c.retrieve.tolist() == [[0]] and c.depth.tolist() == [0]


@pytest.mark.parametrize(
    ("tokens", "parents", "message"),
    [
        ([1, 2, 3], [-1, 2, 0], "listed before"),
        ([1, 2, 3], [0, 0, 1], "root"),
        ([1, 2, 2], [-1, 0, 0], "same token"),
        ([1, 2], [-1, 0, 0], "differ"),
    ],
)
def test_malformed_trees_are_rejected(tokens, parents, message):
    with pytest.raises(TreeError, match=message):
        compile_tree(tree(tokens, parents))


def test_global_selection_keeps_parents_even_on_tied_scores():
    # pool: level 1 = [a, b]; children of a (pool 0) = [c, d], with c tied to a.
    tokens = torch.tensor([10, 11, 12, 13])
    scores = torch.tensor([-0.5, -2.0, -0.5, -3.0])
    parents = torch.tensor([-1, -1, 0, 0])
    t = select_tree(tokens, scores, parents, root_token=7, keep=2)
    assert t.tokens.tolist() == [7, 10, 12] and t.parents.tolist() == [-1, 0, 1]
    compile_tree(t)


# --- lossless greedy decoding ------------------------------------------------------


class OracleDrafter:
    """A perfect head: drafts the reference continuation as a chain, with wrong siblings
    beside it, and deliberately breaks the chain at a random depth in some steps."""

    def __init__(self, reference, prompt_len, vocab, depth=4, seed=0):
        self.ref, self.prompt_len, self.vocab, self.depth = reference, prompt_len, vocab, depth
        self.observed = 0
        self.rng = random.Random(seed)
        self.forwards = 0

    def observe(self, features, next_tokens):
        assert features.shape[0] == next_tokens.shape[0]
        self.observed += next_tokens.shape[0]

    def draft(self, root):
        pos = self.observed - self.prompt_len + 1  # tokens generated so far
        assert self.ref[pos - 1] == root
        chain = self.ref[pos : pos + self.depth]
        if chain and self.rng.random() < 0.3:  # a wrong token somewhere on the chain
            i = self.rng.randrange(len(chain))
            chain = chain[:i] + [(chain[i] + 1) % self.vocab] + chain[i + 1 :]
        tokens, parents, prev = [root], [-1], 0
        for tok in chain:
            tokens += [(tok + 2) % self.vocab, tok]  # a wrong sibling first, then the chain
            parents += [prev, prev]
            tokens.append((tok + 5) % self.vocab)  # a child of the wrong sibling
            parents.append(len(tokens) - 3)
            prev = len(tokens) - 2
        return DraftTree(torch.tensor(tokens), torch.tensor(parents))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("params", [TreeParams(8, 3, 3), TreeParams(2, 0, 1), TreeParams(24, 5, 4)])
def test_greedy_eagle2_with_a_random_head_equals_greedy_ar(kind, params):
    model = dense(kind)
    head = new_head(model).double().eval()
    ids = prompt()
    ar = autoregressive_decode(model, ids, 40)
    ours = eagle2_decode(model, head, ids, params, 40)
    assert ours.output_ids == ar.output_ids
    steps = ours.target_forwards - 1  # the prefill commits one token without drafts
    assert sum(ours.extra["accept_histogram"].values()) == ours.extra["steps"] == steps
    # every committed token: one per step (the target's own) plus the accepted drafts
    assert len(ours.extra["accepted_lengths"]) == steps
    assert 1 + steps + sum(ours.extra["accepted_lengths"]) >= len(ours.output_ids)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_eagle2_with_a_perfect_head_equals_greedy_ar_in_fewer_forwards(kind):
    model = dense(kind)
    ids = prompt()
    ar = autoregressive_decode(model, ids, 60)
    oracle = OracleDrafter(ar.output_ids + [0] * 8, ids.shape[1], SHAPE["vocab_size"])
    ours = speculative_decode(model, oracle, ids, 60)
    assert ours.output_ids == ar.output_ids
    assert ours.extra["tau"] > 3.0  # depth-4 chains, mostly right
    assert ours.target_forwards < ar.target_forwards / 3


def test_eos_and_max_new_tokens_cut_the_output_like_ar():
    model = dense()
    ids = prompt()
    ar = autoregressive_decode(model, ids, 40)
    eos = ar.output_ids[17]
    ar_eos = autoregressive_decode(model, ids, 40, eos_token_id=eos)
    oracle = OracleDrafter(ar.output_ids + [0] * 8, ids.shape[1], SHAPE["vocab_size"], seed=1)
    ours = speculative_decode(model, oracle, ids, 40, eos_token_id=eos)
    assert ours.output_ids == ar_eos.output_ids and ours.output_ids[-1] == eos
    oracle = OracleDrafter(ar.output_ids + [0] * 8, ids.shape[1], SHAPE["vocab_size"], seed=2)
    assert speculative_decode(model, oracle, ids, 13).output_ids == ar.output_ids[:13]


@pytest.mark.parametrize("variant", ["llama-gqa", "qwen2"])
def test_greedy_eagle2_dllm_equals_greedy_dllm(variant):
    model = make_dllm(variant)
    ids = prompt(vocab=model.config.vocab_size)
    ref = autoregressive_decode(model, ids, 48)
    assert 0.2 < ref.extra["executed_share"] < 0.9, "the test needs real skips"
    head = new_head(model).double().eval()
    random_head = eagle2_decode(model, head, ids, TreeParams(10, 3, 3), 48)
    assert random_head.output_ids == ref.output_ids
    oracle = OracleDrafter(ref.output_ids + [0] * 8, ids.shape[1], model.config.vocab_size)
    perfect = speculative_decode(model, oracle, ids, 48)
    assert perfect.output_ids == ref.output_ids
    assert perfect.extra["tau"] > 3.0
    # D-LLM counters: whole-layer skips are rarer than per-token skips over a tree
    assert perfect.extra["layer_load_share"] >= perfect.extra["executed_share"]
    # routers that skip about half the tokens: a tree's tokens often disagree on a layer
    assert 0 < perfect.extra["tree_router_split_rate"] <= 1


def test_tree_split_rate_is_zero_when_every_router_agrees():
    model = make_dllm("llama-gqa", skip_half=False)  # the execute-first initial bias
    ids = prompt(vocab=model.config.vocab_size)
    ref = autoregressive_decode(model, ids, 24)
    assert ref.extra["executed_share"] == 1.0
    oracle = OracleDrafter(ref.output_ids + [0] * 8, ids.shape[1], model.config.vocab_size)
    out = speculative_decode(model, oracle, ids, 24)
    assert out.output_ids == ref.output_ids
    assert out.extra["tree_router_split_rate"] == 0.0
    # a dense target consults no router: no split rate at all
    target = dense()
    ids = prompt(vocab=target.config.vocab_size)
    ar = autoregressive_decode(target, ids, 8)
    oracle = OracleDrafter(ar.output_ids + [0] * 8, ids.shape[1], target.config.vocab_size)
    assert "tree_router_split_rate" not in speculative_decode(target, oracle, ids, 8).extra


# --- KV compaction ------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [False, True])
def test_commit_leaves_the_cache_of_decoding_the_path_token_by_token(dynamic):
    model = make_dllm("llama-gqa") if dynamic else dense()
    vocab = model.config.vocab_size
    ids = prompt(vocab=vocab)
    num_layers = model.config.num_hidden_layers
    cache = LayerSkipCache.empty(num_layers)
    tp = run_layers(model, start_chain(model, ids[0], cache), cache, 0, num_layers)
    commit(cache, tp, torch.arange(ids.shape[1]))
    t = tree([5, 6, 7, 8, 9, 10, 11], [-1, 0, 0, 1, 2, 4, 4])
    compiled = compile_tree(t, torch.float64)
    tp = run_layers(model, start_tree(model, compiled, cache), cache, 0, num_layers)
    logits, _ = finish_pass(model, tp)
    path = torch.tensor([0, 2, 4, 6])
    commit(cache, tp, path)

    ref = LayerSkipCache.empty(num_layers)
    ref_logits = []
    if dynamic:
        _cached_step(model, ids, ref)
        for tok in t.tokens[path].tolist():
            ref_logits.append(_cached_step(model, torch.tensor([[tok]]), ref)[0][0, -1])
    else:
        from transformers import DynamicCache

        from spadec.compat import with_cache

        dyn = DynamicCache(config=model.config)
        model(input_ids=ids, **with_cache(dyn))
        for tok in t.tokens[path].tolist():
            out = model(input_ids=torch.tensor([[tok]]), **with_cache(dyn))
            ref_logits.append(out.logits[0, -1])
    torch.testing.assert_close(logits[path], torch.stack(ref_logits), rtol=0, atol=1e-6)
    if dynamic:
        ref_kv, ref_seen = [ref.layer(i) for i in range(num_layers)], ref.seen_tokens
    else:  # transformers' own cache of the same tokens
        ref_kv = [(layer.keys, layer.values) for layer in dyn.layers]
        ref_seen = ids.shape[1] + path.numel()
    assert cache.seen_tokens == ref_seen
    assert cache.layer_lengths() == [k.shape[2] for k, _ in ref_kv]
    for i, (keys, values) in enumerate(ref_kv):
        torch.testing.assert_close(cache.layer(i)[0], keys, rtol=0, atol=1e-6)
        torch.testing.assert_close(cache.layer(i)[1], values, rtol=0, atol=1e-6)


# --- sampling -------------------------------------------------------------------------


def test_sampling_acceptance_emits_the_target_distribution():
    # root -> {token 0 (node 1) -> token 2 (node 3), token 1 (node 2)}; vocab 4. Every node
    # has its own distribution, so using the wrong node's row after an acceptance shows.
    compiled = compile_tree(tree([3, 0, 1, 2], [-1, 0, 0, 1]))
    rows = torch.tensor(
        [[0.3, 0.2, 0.1, 0.4], [0.1, 0.2, 0.6, 0.1], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]
    )
    gen = torch.Generator().manual_seed(0)
    trials = 6000
    first = torch.zeros(4)
    second_after_0 = torch.zeros(4)
    for _ in range(trials):
        acc = accept_sampling(compiled, rows.log(), 1.0, gen)
        emitted = [*compiled.tokens[acc.path[1:]].tolist(), acc.next_token]
        first[emitted[0]] += 1
        if emitted[0] == 0:
            second_after_0[emitted[1]] += 1
    torch.testing.assert_close(first / trials, rows[0], rtol=0, atol=0.03)  # ~4 std errors
    torch.testing.assert_close(second_after_0 / second_after_0.sum(), rows[1], rtol=0, atol=0.05)


def test_unverified_nodes_are_never_accepted():
    compiled = compile_tree(tree([3, 0, 1], [-1, 0, 0]))
    logits = torch.tensor([[0.0, 5.0, 0.0]] * 3)  # the target wants token 1 = node 2
    assert accept_greedy(compiled, logits).path.tolist() == [0, 2]
    skipped = torch.tensor([True, True, False])
    acc = accept_greedy(compiled, logits, skipped)
    assert acc.path.tolist() == [0] and acc.next_token == 1


def test_sampled_eagle2_runs_and_is_reproducible():
    model = dense()
    head = new_head(model).double().eval()
    ids = prompt()
    runs = [
        eagle2_decode(
            model,
            head,
            ids,
            TreeParams(8, 3, 3),
            30,
            temperature=0.8,
            generator=torch.Generator().manual_seed(5),
        ).output_ids
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0]) == 30


# --- the head's (feature, next token) pairing, training vs drafting -------------------


def test_head_cache_in_chunks_equals_the_training_forward():
    from spadec.decoding.draft import head_extend

    model = dense()
    head = new_head(model).double().eval()
    torch.manual_seed(1)
    feats = torch.randn(11, SHAPE["hidden_size"], dtype=torch.float64)
    ids = torch.randint(0, SHAPE["vocab_size"], (11,))
    with torch.no_grad():
        whole = head(feats[None], ids[None])[0]
    cache = LayerSkipCache.empty(1)
    parts = [head_extend(head, cache, feats[a:b], ids[a:b]) for a, b in ((0, 6), (6, 7), (7, 11))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-10)


def test_draft_scores_are_the_heads_own_chained_predictions():
    """Each drafted node's score = its parent's + log p(token) from the head run on the
    chain (accepted pairs, then (predicted feature, drafted token) pairs) - what training
    teaches the head to do one step at a time."""
    from spadec.decoding.draft import draft_tree, head_extend

    model = dense()
    head = new_head(model).double().eval()
    torch.manual_seed(2)
    d, v = SHAPE["hidden_size"], SHAPE["vocab_size"]
    feats = torch.randn(7, d, dtype=torch.float64)
    ids = torch.randint(0, v, (7,))  # pairs (f_t, x_{t+1}); ids[-1] is the root
    cache = LayerSkipCache.empty(1)
    root_hidden = head_extend(head, cache, feats, ids)[-1]
    params = TreeParams(total_tokens=1 + 3 + 2 * 9, depth=2, top_k=3)  # keep the whole pool
    t = draft_tree(head, model.lm_head, cache, root_hidden, int(ids[-1]), params)
    assert cache.seen_tokens == 7 and cache.layer_lengths() == [7]  # drafts left no trace

    def chain_hidden(node):
        """Head output at `node` from a plain forward over its chain."""
        path = []
        while node > 0:
            path.append(node)
            node = int(t.parents[node])
        path.reverse()
        f, x, h = feats, ids, root_hidden
        for n in path:
            f = torch.cat([f, h[None]])
            x = torch.cat([x, t.tokens[n : n + 1]])
            with torch.no_grad():
                h = head(f[None], x[None])[0, -1]
        return h

    checked = 0
    for node in range(1, t.size):
        parent = int(t.parents[node])
        h = root_hidden if parent == 0 else chain_hidden(parent)
        logp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
        expected = (t.scores[parent] if parent else 0.0) + logp[t.tokens[node]]
        torch.testing.assert_close(t.scores[node], expected.to(t.scores.dtype), rtol=0, atol=1e-5)
        checked += 1
    assert checked == params.total_tokens - 1


def test_a_loaded_head_keeps_fp32_rotary_frequencies(tmp_path):
    from spadec.eagle.head import load_head, save_head

    save_head(new_head(dense().float()), tmp_path / "head")
    head = load_head(tmp_path / "head", dtype=torch.bfloat16)
    assert head.fc.weight.dtype == torch.bfloat16
    assert head.rotary_emb.inv_freq.dtype == torch.float32


def test_bf16_tree_verification_stays_finite():
    model = dense().to(torch.bfloat16)
    head = new_head(model).to(torch.bfloat16).eval()
    out = eagle2_decode(model, head, prompt(), TreeParams(16, 4, 4), 24)
    assert len(out.output_ids) == 24 and all(0 <= t < SHAPE["vocab_size"] for t in out.output_ids)


def test_empty_prompt_and_huge_top_k_are_handled():
    model = dense()
    head = new_head(model).double().eval()
    with pytest.raises(ValueError, match="empty"):
        eagle2_decode(model, head, torch.zeros(1, 0, dtype=torch.long), TreeParams(8, 2, 2), 4)
    wide = eagle2_decode(model, head, prompt(), TreeParams(300, 1, 500), 8)  # top_k > vocab
    assert wide.output_ids == autoregressive_decode(model, prompt(), 8).output_ids


def _cached_step(model, ids, cache):
    """Cached forward of new tokens [1, n]: (logits [1, n, V], decisions [n, layers])."""
    logits, _, tp = chain_forward(model, ids[0], cache)
    return logits[None], gate_matrix(tp)
