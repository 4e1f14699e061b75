"""What each decoding method of the tables runs on: its target model, its draft head, and
the label and colour every table and figure shows it with. One table read by the decoding dispatch, the eval stage and the tables (and
free of torch, so the tables stay light).

Targets:
  dense          the base model
  dllm           SpaDec's target: the D-LLM whose routers read the quantised hidden
                 state (the multi-token robust router, `dllm.router_input_bits`)
  dllm_baseline  the D-LLM behind the paper's D-LLM and Eagle2+D-LLM bars: upstream
                 D-LLM routers (`dllm.baseline_router_input_bits`, none by default).
                 When both router inputs are equal the pipeline trains one D-LLM and
                 this name resolves to `dllm`.

Kinds: `ours` (this project's decoders) and `peer` (what a user would run instead:
transformers' `generate` and its prompt-lookup decoding on the dense target,
`spadec.decoding.peers`), timed in the same run as reference rows.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGETS = ("dense", "dllm", "dllm_baseline")


@dataclass(frozen=True)
class Method:
    target: str
    head: str | None  # the target whose EAGLE head drafts; None = one token per forward
    label: str
    colour: str  # a matplotlib colour, the same in every figure
    kind: str = "ours"  # "ours" or "peer" (a reference row: someone else's decoder)

    @property
    def peer(self) -> bool:
        return self.kind == "peer"

    @property
    def plain(self) -> bool:
        """One token per forward through our runtime (a peer never is: not ours)."""
        return self.head is None and not self.peer


METHODS = {
    "ar": Method("dense", None, "AR", "tab:gray"),
    # peers: transformers' greedy generate and its prompt lookup, on the dense target
    "hf_generate": Method("dense", None, "HF generate (peer)", "silver", "peer"),
    "hf_prompt_lookup": Method("dense", None, "HF prompt lookup (peer)", "tab:purple", "peer"),
    "dllm": Method("dllm_baseline", None, "D-LLM", "tab:orange"),
    "dllm_robust": Method("dllm", None, "D-LLM (robust router)", "tab:brown"),
    "eagle2": Method("dense", "dense", "Eagle2", "tab:blue"),
    "eagle2_dllm": Method("dllm_baseline", "dllm_baseline", "Eagle2+D-LLM", "tab:red"),
    # the ablation's cell "robust router, every tree token votes": SpaDec's target and head
    # without the predictor, to separate what the router saves from what ATS saves
    "eagle2_dllm_robust": Method("dllm", "dllm", "Eagle2+D-LLM (robust router)", "tab:pink"),
    "spadec_eagle2": Method("dllm", "dllm", "SpaDec", "tab:green"),
}
# `spadec_eagle2` runs the configured ATS mode; these name a mode explicitly.
ATS_VARIANTS = {"spadec_eagle2_prune": "prune", "spadec_eagle2_steer": "steer"}
# method -> (label, colour): the one place tables and figures take them from
STYLES = {
    **{name: (m.label, m.colour) for name, m in METHODS.items()},
    "spadec_eagle2_prune": ("SpaDec (prune)", "tab:olive"),
    "spadec_eagle2_steer": ("SpaDec (steer)", "tab:cyan"),
}
LABELS = {name: text for name, (text, _) in STYLES.items()}
# How each tree method's target forward decides whether a layer runs (the ablation table).
VERIFICATION = {
    "eagle2_dllm": "all tokens vote",
    "eagle2_dllm_robust": "all tokens vote",
    "spadec_eagle2_prune": "ATS prune",
    "spadec_eagle2_steer": "ATS steer",
}
# Display order (the paper's figure: baselines first, SpaDec last); unknown ones follow.
METHOD_ORDER = (*METHODS, *ATS_VARIANTS)


def label(method: str) -> str:
    """A method's label in tables and figures (a method outside the catalog: its name)."""
    return LABELS.get(method, method)


def colour(method: str) -> str | None:
    """A method's colour in every figure (outside the catalog: None, matplotlib's cycle)."""
    return STYLES[method][1] if method in STYLES else None


def base_method(method: str) -> str:
    """The catalog entry of a method name (an ATS variant is spadec_eagle2)."""
    return "spadec_eagle2" if method in ATS_VARIANTS else method


def method_info(method: str) -> Method:
    name = base_method(method)
    if name not in METHODS:
        known = ", ".join(METHOD_ORDER)
        raise ValueError(f"unknown method {method!r} (known: {known})")
    return METHODS[name]


def resolve_target(target: str, separate_baseline: bool) -> str:
    """The model a target name stands for: `dllm_baseline` is `dllm` unless the run
    trained a separate baseline D-LLM."""
    return target if target != "dllm_baseline" or separate_baseline else "dllm"


def plain_method(target: str, separate_baseline: bool) -> str:
    """The one-token-per-forward method of a (resolved) target: the lossless reference
    that greedy speculative decoding on that target must reproduce."""
    return next(
        name
        for name, m in METHODS.items()
        if m.plain and resolve_target(m.target, separate_baseline) == target
    )


def with_references(methods: list[str], separate_baseline: bool) -> list[str]:
    """`methods` plus, for every target they run on, its plain method when none of them
    is it: each lossless method then has its reference in the same run."""
    out = list(methods)
    targets = {m: resolve_target(method_info(m).target, separate_baseline) for m in methods}
    have = {targets[m] for m in methods if method_info(m).plain}
    for m in methods:
        if targets[m] not in have:
            out.append(plain_method(targets[m], separate_baseline))
            have.add(targets[m])
    return out


PEERS = tuple(name for name, m in METHODS.items() if m.peer)


def is_peer(method: str) -> bool:
    """A reference row (someone else's decoder), not one of our methods."""
    return method in PEERS


def is_plain(method: str) -> bool:
    """One token per forward (a method outside the catalog is not)."""
    return base_method(method) in METHODS and METHODS[base_method(method)].plain


DENSE_METHODS = tuple(name for name, m in METHODS.items() if m.target == "dense")


def default_target(method: str) -> str:
    """A method's target in a run with one D-LLM (records written before records named
    their target); a method outside the catalog is its own target."""
    if base_method(method) not in METHODS:
        return method
    return resolve_target(METHODS[base_method(method)].target, separate_baseline=False)


def references(targets: dict[str, str]) -> dict[str, str | None]:
    """method -> its lossless reference among the methods of one run (`targets` maps each
    to its resolved target): the plain method on the same target, or None."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    plain = {}
    for m in sorted(targets, key=lambda m: rank.get(m, len(rank))):
        if is_plain(m):
            plain.setdefault(targets[m], m)
    return {m: plain.get(t) for m, t in targets.items()}


def separate_baseline(paths: dict) -> bool:
    """Whether a run's model paths (target name -> directory) hold a baseline D-LLM apart
    from SpaDec's."""
    baseline = paths.get("dllm_baseline")
    return bool(baseline) and str(baseline) != str(paths.get("dllm"))
