"""End to end, EAGLE-2 sampling at temperature 1 emits the target's own distribution.

Speculative sampling is only lossless if the acceptance rule (multi-candidate rejection
with residual renormalisation, `spadec.decoding.accept`) and the loop around it (which row
of logits belongs to which node, what is committed, what the next root is) are right
together. `test_eagle_decode.py` checks the rule on hand-made rows; this checks the whole
`eagle2_decode` pipeline on a real (tiny, random) Llama target with a random EAGLE head.

How: with an 8-token vocabulary the first 3 generated tokens have 8**3 = 512 possible
values, so their exact joint distribution under the target follows by enumeration (one
batched forward over the 64 two-token continuations). Over many seeds, plain
autoregressive sampling and EAGLE-2 sampling each give an empirical joint; both must lie
within total-variation distance `bound` of the exact one, where `bound` is the 99.9th
percentile of that distance for exact multinomial draws of the same size (the noise
floor, computed by simulation). Everything is seeded, so the test is deterministic.

Why the test can fail: two deliberately wrong acceptance rules, run through the same
`eagle2_decode` loop on the same seeds, must land far outside `bound` - one forgets to
renormalise after a rejection (the classic speculative-sampling bug), one keeps using the
parent's distribution after a draft is accepted (each control's rule is otherwise the
library's, draw for draw: without its flaw it reproduces eagle2's tokens). A random head drafts tokens the target
only sometimes wants, so rejections, depth-1 and depth-2 acceptances all occur; the
test asserts that they do, otherwise it would prove nothing about the rule.
"""

from __future__ import annotations

import pytest
import torch

from spadec.decoding.accept import Acceptance
from spadec.decoding.autoregressive import autoregressive_decode
from spadec.decoding.draft import TreeParams
from spadec.decoding.eagle2 import eagle2_decode
from spadec.eagle.head import new_head
from tests.conftest import tiny_llama

VOCAB = 8
FIRST = 3  # generated tokens compared: token 3 can be a depth-2 draft of the first step
CELLS = VOCAB**FIRST
SEEDS = 1500  # per sampler: ~7 s of EAGLE-2 decoding on one core
# 3 level-1 drafts and 6 below them: every level-1 draft has children to try, so
# depth-2 acceptance happens often enough to be tested
PARAMS = TreeParams(total_tokens=10, depth=2, top_k=3)
PROMPT = torch.tensor([[1, 5, 2, 7, 3]])
# Default-initialised weights (std 0.02) give a near-uniform next-token distribution in
# which every rule looks right; std 0.2 (with this seed) gives 1.3-1.7 nats per token
# (uniform: 2.08), and a next-token distribution that depends strongly on the context -
# which a rule reading the wrong node's row needs in order to show.
INIT_STD = 0.2
AR_SEEDS = range(0, SEEDS)
EAGLE_SEEDS = range(SEEDS, 2 * SEEDS)  # disjoint from ar's: the two samples are independent


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(
        seed=1, vocab_size=VOCAB, max_position_embeddings=64, initializer_range=INIT_STD
    ).double()
    # random: a poor drafter, on purpose; with this seed ~40% of steps accept a draft and
    # ~15% accept two, so every branch of the rule is taken hundreds of times
    torch.manual_seed(2)
    head = new_head(target).double().eval()
    return target, head


@pytest.fixture(scope="module")
def exact(models) -> torch.Tensor:
    """P(x1, x2, x3 | prompt) flattened to [CELLS] (index (x1 * V + x2) * V + x3)."""
    target, _ = models
    n = PROMPT.shape[1]
    pairs = torch.cartesian_prod(torch.arange(VOCAB), torch.arange(VOCAB))  # row x1 * V + x2
    with torch.no_grad():
        logits = target(torch.cat([PROMPT.expand(pairs.shape[0], -1), pairs], dim=1)).logits
    probs = torch.softmax(logits[:, n - 1 :].double(), dim=-1)  # [V*V, 3, V]
    p1 = probs[0, 0]  # the same for every row: it sees the prompt only
    p2 = probs[::VOCAB, 1]  # [x1, x2]: rows with x2 = 0, one per x1
    p3 = probs[:, 2].view(VOCAB, VOCAB, VOCAB)  # [x1, x2, x3]
    joint = (p1[:, None, None] * p2[:, :, None] * p3).flatten()
    torch.testing.assert_close(joint.sum(), torch.tensor(1.0, dtype=joint.dtype))
    # the premise of the parent-row control: the distribution of x3 differs from that of
    # x2 at the same x1 (mean TV over (x1, x2)), i.e. rows of different nodes differ
    shift = (p1[:, None] * p2 * total_variation(p3, p2[:, None, :])).sum()
    assert shift > 0.3, f"a target this insensitive to context hides row mix-ups: {shift}"
    return joint


@pytest.fixture(scope="module")
def bound(exact) -> float:
    """99.9th percentile of TV(empirical, exact) over 2000 simulated samples of SEEDS exact
    draws: the noise floor a correct sampler stays under. Sampling noise alone gives a
    TV of ~0.14 here (~90 effective cells), so a bare TV threshold would be meaningless."""
    reps = 2000
    gen = torch.Generator().manual_seed(123)
    draws = torch.multinomial(exact, reps * SEEDS, replacement=True, generator=gen)
    rows = torch.arange(reps).repeat_interleave(SEEDS) * CELLS
    counts = torch.bincount(rows + draws, minlength=reps * CELLS).view(reps, CELLS)
    tvs = total_variation(counts.double() / SEEDS, exact)
    return float(tvs.quantile(0.999))


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p - q).abs().sum(dim=-1)


def empirical(decode, seeds) -> tuple[torch.Tensor, list[int]]:
    """The empirical joint of the first FIRST tokens of `decode(generator)` over `seeds`,
    and the drafts accepted at every speculative step (none for ar)."""
    counts = torch.zeros(CELLS, dtype=torch.float64)
    accepted: list[int] = []
    for seed in seeds:
        out = decode(torch.Generator().manual_seed(seed))
        tokens = out.output_ids
        assert len(tokens) == FIRST
        cell = 0
        for tok in tokens:
            cell = cell * VOCAB + tok
        counts[cell] += 1
        accepted.extend(out.extra.get("accepted_lengths", []))
    return counts / len(seeds), accepted


def test_eagle2_sampling_matches_the_exact_target_distribution(models, exact, bound):
    target, head = models
    ar, _ = empirical(
        lambda gen: autoregressive_decode(target, PROMPT, FIRST, temperature=1.0, generator=gen),
        AR_SEEDS,
    )
    eagle, accepted = empirical(
        lambda gen: eagle2_decode(
            target, head, PROMPT, PARAMS, max_new_tokens=FIRST, temperature=1.0, generator=gen
        ),
        EAGLE_SEEDS,
    )
    tv_ar = float(total_variation(ar, exact))
    tv_eagle = float(total_variation(eagle, exact))
    numbers = f"TV eagle2 {tv_eagle:.4f}, ar {tv_ar:.4f}, bound {bound:.4f}"
    # ar is the reference sampler: it checks the enumeration and shows the floor is right
    assert tv_ar <= bound, numbers
    assert tv_eagle <= bound, numbers
    # the rule was exercised: all-rejected steps, and accepted drafts at depths 1 and 2
    steps = len(accepted)
    for depth in (0, 1, 2):
        share = accepted.count(depth) / steps
        assert share > 0.02, f"{share:.3f} of {steps} steps accepted {depth} drafts"


def rejection_rule(residual: bool = True, own_row: bool = True):
    """EAGLE-2's sampling acceptance (`acceptance=` of `eagle2_decode`), optionally broken:
    `residual=False` keeps a rejected token's probability when trying the next sibling and
    drawing the bonus token; `own_row=False` tries an accepted node's children (and draws
    its bonus token) against its parent's distribution instead of the node's own."""

    def rule(compiled, logits, verified, temperature, generator=None) -> Acceptance:
        assert verified is None or bool(verified.all())  # eagle2 verifies every node
        probs = torch.softmax(logits.double().cpu() / temperature, dim=-1)
        tokens, parents = compiled.tokens.tolist(), compiled.parents.tolist()
        path, node, p = [0], 0, probs[0]
        while True:
            for child in [c for c in range(1, len(tokens)) if parents[c] == node]:
                x = tokens[child]
                if float(torch.rand((), generator=generator)) < float(p[x]):
                    path.append(child)
                    p = probs[child] if own_row else probs[node]
                    node = child
                    break
                if residual:
                    p = p.clone()
                    p[x] = 0.0
                    p = p / p.sum()
            else:  # every child rejected (or none): the bonus token ends the step
                bonus = int(torch.multinomial(p, 1, generator=generator))
                return Acceptance(torch.tensor(path, device=compiled.tokens.device), bonus)

    return rule


@pytest.mark.parametrize(
    "flaw", [{"residual": False}, {"own_row": False}], ids=["no-residual", "parent-row"]
)
def test_a_wrong_acceptance_rule_is_caught(models, exact, bound, flaw):
    """The check has power: the same loop and seeds with a broken rule fail it clearly."""
    target, head = models
    broken, _ = empirical(
        lambda gen: eagle2_decode(
            target,
            head,
            PROMPT,
            PARAMS,
            max_new_tokens=FIRST,
            temperature=1.0,
            generator=gen,
            acceptance=rejection_rule(**flaw),
        ),
        EAGLE_SEEDS,
    )
    tv_broken = float(total_variation(broken, exact))
    numbers = f"TV broken {tv_broken:.4f}, bound {bound:.4f}"
    # well outside the floor, not just over it: a margin that a reseeding cannot close
    assert tv_broken > 1.2 * bound, numbers


# Medusa on the same target: two random heads, a static tree of 3 level-1 candidates and
# 4 below them (choices as in spadec.decoding.medusa_trees), the same lossless rule.
MEDUSA_TREE = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (2, 0))
MEDUSA_SEEDS = range(2 * SEEDS, 3 * SEEDS)


def test_medusa_sampling_matches_the_exact_target_distribution(models, exact, bound):
    from spadec.decoding.medusa import medusa_decode
    from spadec.medusa.heads import new_heads

    target, _ = models
    torch.manual_seed(3)
    heads = new_heads(target, num_heads=2, num_blocks=1).double().eval()
    with torch.no_grad():  # fresh blocks are the identity: make the heads guess differently
        for param in heads.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    medusa, accepted = empirical(
        lambda gen: medusa_decode(
            target,
            heads,
            PROMPT,
            MEDUSA_TREE,
            max_new_tokens=FIRST,
            temperature=1.0,
            generator=gen,
        ),
        MEDUSA_SEEDS,
    )
    tv = float(total_variation(medusa, exact))
    assert tv <= bound, f"TV medusa {tv:.4f}, bound {bound:.4f}"
    steps = len(accepted)
    for depth in (0, 1, 2):
        share = accepted.count(depth) / steps
        assert share > 0.02, f"{share:.3f} of {steps} steps accepted {depth} drafts"
