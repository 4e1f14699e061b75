"""The one declaration of every decoding method of the tables: the target it runs on, how it
drafts, how its tree is verified, whether it is lossless, and the label and colour every
table and figure shows it with. The decoding dispatch (`spadec.eval.methods`), the eval
stage, the CLI, the workflow's rules, the schema (by a test) and the tables all read this
table; it is free of torch, so the tables and the Snakefile stay light.

A new method is one entry here plus, where it is new, its drafter (`DRAFTERS`, and its
loader and decoder in `spadec.eval.methods`), its verify step and its acceptance rule.

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

Artefacts: what a method loads, by key — a target's name, `<drafter key>_<target>` (e.g.
`head_dllm`: the EAGLE head trained on the dllm target), a predictor per drafter kind (`predictor`: EAGLE trees,
`predictor_medusa`: Medusa trees) — and, with `data`,
where each lies in a model's results folder (`artefact_path`): the one list the eval
stage, its rule, `results_paths` and the CLI take them from.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGETS = ("dense", "dllm", "dllm_baseline")
# ATS modes (`spadec.decoding.ats.MODES`) -> lossless: `prune` verifies the surviving
# subtree only (lossless), `steer` lets the best path alone vote on the layers (lossy)
ATS_MODES = {"prune": True, "steer": False}
# verify steps: how a tree method's target forward decides whether a D-LLM layer runs
VERIFY_STEPS = {
    "all": "all tokens vote",  # every tree token votes
    "spadec": "ATS",  # first K layers, the acceptance predictor, ATS (prune | steer)
}


@dataclass(frozen=True)
class Drafter:
    """A drafter kind: what it drafts from."""

    description: str
    key: str | None = None  # artefact key prefix (`<key>_<target>`); None: nothing trained
    path: str | None = None  # results-relative folder of that artefact, `{target}` filled in
    # artefact key of the acceptance predictor trained on this drafter's trees (SpaDec's
    # verify step on SpaDec's D-LLM); its folder is `<key>/model`
    predictor: str | None = None


DRAFTERS = {
    # trained on its target
    "eagle": Drafter("EAGLE head", "head", "eagle/{target}/head", "predictor"),
    # Medusa heads on the target's final-norm features, a static sparse tree (medusa.tree);
    # its own predictor: one trained on EAGLE trees scores Medusa's worse (held-out AUC
    # 0.855 vs 0.916 on the tiny default, benchmarks/medusa_predictor_auc.py)
    "medusa": Drafter("Medusa heads", "medusa", "medusa/{target}/heads", "predictor_medusa"),
    # transformers' prompt lookup (a peer): n-grams of the prompt, nothing trained
    "prompt_lookup": Drafter("n-grams of the prompt"),
}


@dataclass(frozen=True)
class Method:
    target: str  # one of TARGETS
    label: str
    colour: str  # a matplotlib colour, the same in every figure
    # how it drafts (a key of DRAFTERS; "eagle" = an EAGLE head trained on `target`);
    # None = one token per forward
    drafter: str | None = None
    # how its tree is verified (a key of VERIFY_STEPS); None for a method without a tree
    # of ours (plain decoding, peers)
    verify: str | None = None
    # the ATS mode of a `spadec` verify step; None there = the configured mode
    # (predictor.decode.ats_mode). An entry with a mode set is a variant of the entry
    # without one (same target, drafter and verify step): not configurable, it joins a run
    # when eval.speed.compare_ats_modes asks for the other mode.
    ats_mode: str | None = None
    # greedy output equal to its target's plain decoding; None = as its ATS mode
    lossless: bool | None = True
    kind: str = "ours"  # "ours" or "peer" (a reference row: someone else's decoder)

    @property
    def peer(self) -> bool:
        return self.kind == "peer"

    @property
    def plain(self) -> bool:
        """One token per forward through our runtime (a peer never is: not ours)."""
        return self.drafter is None and not self.peer

    @property
    def needs_predictor(self) -> bool:
        return self.verify == "spadec"

    @property
    def head(self) -> str | None:
        """The target whose EAGLE head drafts (None: no EAGLE head)."""
        return self.target if self.drafter == "eagle" else None


METHODS = {
    "ar": Method("dense", "AR", "tab:gray"),
    # peers: transformers' greedy generate and its prompt lookup, on the dense target
    "hf_generate": Method("dense", "HF generate (peer)", "silver", kind="peer"),
    "hf_prompt_lookup": Method(
        "dense", "HF prompt lookup (peer)", "tab:purple", "prompt_lookup", kind="peer"
    ),
    "dllm": Method("dllm_baseline", "D-LLM", "tab:orange"),
    "dllm_robust": Method("dllm", "D-LLM (robust router)", "tab:brown"),
    # the paper's Medusa half: Medusa, Medusa+D-LLM, SpaDec w. Medusa
    "medusa": Method("dense", "Medusa", "gold", "medusa", "all"),
    "medusa_dllm": Method("dllm_baseline", "Medusa+D-LLM", "darkgoldenrod", "medusa", "all"),
    "spadec_medusa": Method(
        "dllm", "SpaDec w. Medusa", "yellowgreen", "medusa", "spadec", lossless=None
    ),
    "spadec_medusa_prune": Method(
        "dllm", "SpaDec w. Medusa (prune)", "olivedrab", "medusa", "spadec", "prune", lossless=True
    ),
    "spadec_medusa_steer": Method(
        "dllm", "SpaDec w. Medusa (steer)", "teal", "medusa", "spadec", "steer", lossless=False
    ),
    "eagle2": Method("dense", "Eagle2", "tab:blue", "eagle", "all"),
    "eagle2_dllm": Method("dllm_baseline", "Eagle2+D-LLM", "tab:red", "eagle", "all"),
    # the ablation's cell "robust router, every tree token votes": SpaDec's target and head
    # without the predictor, to separate what the router saves from what ATS saves
    "eagle2_dllm_robust": Method(
        "dllm", "Eagle2+D-LLM (robust router)", "tab:pink", "eagle", "all"
    ),
    "spadec_eagle2": Method("dllm", "SpaDec", "tab:green", "eagle", "spadec", lossless=None),
    # spadec_eagle2 in a named ATS mode
    "spadec_eagle2_prune": Method(
        "dllm", "SpaDec (prune)", "tab:olive", "eagle", "spadec", "prune", lossless=True
    ),
    "spadec_eagle2_steer": Method(
        "dllm", "SpaDec (steer)", "tab:cyan", "eagle", "spadec", "steer", lossless=False
    ),
}
# the baseline every speedup is measured against: plain decoding of the dense target
BASELINE = "ar"
# the method whose answers the response table shows beside the baseline's
SHOWCASE = "spadec_eagle2"


# --- the methods -----------------------------------------------------------------------
# Functions read METHODS when called; the constants below are snapshots at import.


def method_names() -> list[str]:
    """Every method, in display order (the paper's figure: baselines first, SpaDec last)."""
    return list(METHODS)


def configurable_methods() -> list[str]:
    """The methods `eval.speed.methods` may name (the schema's enum): all but the
    fixed-mode variants."""
    return [name for name, m in METHODS.items() if m.ats_mode is None]


def rank(method: str) -> int:
    """A method's place in display order (a method outside the catalog: after all)."""
    names = method_names()
    return names.index(method) if method in names else len(names)


def method_info(method: str) -> Method:
    if method not in METHODS:
        known = ", ".join(METHODS)
        raise ValueError(f"unknown method {method!r} (known: {known})")
    return METHODS[method]


def label(method: str) -> str:
    """A method's label in tables and figures (a method outside the catalog: its name)."""
    return METHODS[method].label if method in METHODS else method


def colour(method: str) -> str | None:
    """A method's colour in every figure (outside the catalog: None, matplotlib's cycle)."""
    return METHODS[method].colour if method in METHODS else None


def _same_but_mode(a: Method, b: Method) -> bool:
    return (a.target, a.drafter, a.verify, a.kind) == (b.target, b.drafter, b.verify, b.kind)


def base_method(method: str) -> str:
    """The configurable entry a fixed-mode variant belongs to (spadec_eagle2_steer ->
    spadec_eagle2); any other name: itself."""
    m = METHODS.get(method)
    if m is None or m.ats_mode is None:
        return method
    return next(name for name, o in METHODS.items() if o.ats_mode is None and _same_but_mode(o, m))


def ats_variants(method: str) -> dict[str, str]:
    """A configurable method's fixed-mode variants: name -> ATS mode."""
    m = METHODS.get(method)
    if m is None or m.ats_mode is not None:
        return {}
    return {
        name: o.ats_mode
        for name, o in METHODS.items()
        if o.ats_mode is not None and _same_but_mode(o, m)
    }


def ats_mode(method: str, configured: str) -> str | None:
    """The ATS mode `method` runs in (None: no ATS)."""
    m = method_info(method)
    return (m.ats_mode or configured) if m.verify == "spadec" else None


def is_lossless(method: str, configured_ats_mode: str) -> bool:
    """Whether greedy `method` reproduces its target's plain decoding."""
    m = method_info(method)
    if m.lossless is None:
        return ATS_MODES[ats_mode(method, configured_ats_mode)]
    return m.lossless


def is_peer(method: str) -> bool:
    """A reference row (someone else's decoder), not one of our methods."""
    return method in METHODS and METHODS[method].peer


def is_plain(method: str) -> bool:
    """One token per forward (a method outside the catalog is not)."""
    return method in METHODS and METHODS[method].plain


def peers() -> list[str]:
    return [name for name, m in METHODS.items() if m.peer]


def on_dense(method: str) -> bool:
    """Runs on the dense target: every layer, every forward (outside the catalog: False)."""
    return method in METHODS and METHODS[method].target == "dense"


def verification(method: str, configured_ats_mode: str | None = None) -> str | None:
    """The ablation's cell of a tree method on a D-LLM: how its target forward decides
    whether a layer runs ("all tokens vote", "ATS prune", "ATS steer"); None for any other
    method, or a configured-mode method without `configured_ats_mode`."""
    m = METHODS.get(method)
    if m is None or m.verify is None or m.target == "dense":
        return None
    if m.verify != "spadec":
        return VERIFY_STEPS[m.verify]
    mode = m.ats_mode or configured_ats_mode
    return f"{VERIFY_STEPS[m.verify]} {mode}" if mode else None


# Snapshots, for readers that want a constant.
METHOD_ORDER = tuple(METHODS)
ATS_VARIANTS = {name: m.ats_mode for name, m in METHODS.items() if m.ats_mode}
STYLES = {name: (m.label, m.colour) for name, m in METHODS.items()}
LABELS = {name: m.label for name, m in METHODS.items()}
VERIFICATION = {name: v for name in METHODS if (v := verification(name))}
PEERS = tuple(peers())
DENSE_METHODS = tuple(name for name in METHODS if on_dense(name))


# --- targets and references ------------------------------------------------------------


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


def bench_methods(
    methods: list[str], ats_mode: str, compare_ats_modes: bool, separate_baseline: bool
) -> list[str]:
    """The methods an eval run times: the configured ones, with `compare_ats_modes` each
    one's fixed-mode variants other than the configured mode, and the plain decoding of
    every target they run on (each lossless method's reference)."""
    out = list(methods)
    if compare_ats_modes:
        for m in methods:
            out += [v for v, mode in ats_variants(m).items() if mode != ats_mode and v not in out]
    return with_references(out, separate_baseline)


def default_target(method: str) -> str:
    """A method's target in a run with one D-LLM (records written before records named
    their target); a method outside the catalog is its own target."""
    if method not in METHODS:
        return method
    return resolve_target(METHODS[method].target, separate_baseline=False)


def references(targets: dict[str, str]) -> dict[str, str | None]:
    """method -> its lossless reference among the methods of one run (`targets` maps each
    to its resolved target): the plain method on the same target, or None."""
    plain = {}
    for m in sorted(targets, key=rank):
        if is_plain(m):
            plain.setdefault(targets[m], m)
    return {m: plain.get(t) for m, t in targets.items()}


def separate_baseline(paths: dict) -> bool:
    """Whether a run's model paths (target name -> directory) hold a baseline D-LLM apart
    from SpaDec's."""
    baseline = paths.get("dllm_baseline")
    return bool(baseline) and str(baseline) != str(paths.get("dllm"))


# --- artefacts -------------------------------------------------------------------------

PREDICTOR, DATA = "predictor", "data"  # the EAGLE trees' predictor; the model's data
# results-relative folders of the targets and of the other artefacts
_PATHS = {
    "dense": "base",
    "dllm": "dllm/hf",
    "dllm_baseline": "dllm_baseline/hf",
    DATA: "data",
}


def predictor_keys() -> list[str]:
    """The acceptance predictors a run can train, one per drafter kind with trees."""
    return list(dict.fromkeys(d.predictor for d in DRAFTERS.values() if d.predictor))


def predictor_key(method: str) -> str | None:
    """The predictor `method`'s verify step runs (None: it runs none)."""
    m = method_info(method)
    return DRAFTERS[m.drafter].predictor if m.needs_predictor else None


def drafter_key(drafter: str, target: str) -> str | None:
    """The artefact key of the `drafter` trained on `target` (None: nothing trained)."""
    prefix = DRAFTERS[drafter].key
    return f"{prefix}_{target}" if prefix else None


def model_keys(separate_baseline: bool = True) -> list[str]:
    """Every model artefact a run can load, in a fixed order: targets, the drafters
    trained on each, the predictor (`dllm_baseline` and its drafters only with a separate
    baseline D-LLM)."""
    targets = [t for t in TARGETS if resolve_target(t, separate_baseline) == t]
    drafters = [key for d in DRAFTERS for t in targets if (key := drafter_key(d, t)) is not None]
    return [*targets, *drafters, *predictor_keys()]


def needs(methods: list[str], separate_baseline: bool) -> list[str]:
    """The model artefacts `methods` load: each one's (resolved) target, its drafter's
    artefact on that target, the predictor where a method's verify step runs it."""
    keys = set()
    for name in methods:
        m = method_info(name)
        target = resolve_target(m.target, separate_baseline)
        keys.add(target)
        if m.drafter is not None and (key := drafter_key(m.drafter, target)):
            keys.add(key)
        if m.needs_predictor:
            keys.add(predictor_key(name))
    return [k for k in model_keys(separate_baseline) if k in keys]


def eval_inputs(methods: list[str], separate_baseline: bool) -> list[str]:
    """The model artefacts an eval run of `methods` is given: what they load, and the
    baseline D-LLM wherever the run trained one (its path tells the run it has two
    D-LLMs, which names each method's reference; not loaded unless a method needs it)."""
    keys = needs(methods, separate_baseline)
    if separate_baseline and "dllm_baseline" not in keys:
        keys.append("dllm_baseline")
    return [k for k in model_keys(separate_baseline) if k in keys]


def _drafter_of(key: str) -> tuple[Drafter, str] | None:
    for d in DRAFTERS.values():
        if d.key and key.startswith(f"{d.key}_") and key[len(d.key) + 1 :] in TARGETS:
            return d, key[len(d.key) + 1 :]
    return None


def artefact_path(key: str) -> str:
    """Where artefact `key` lies in a model's results folder (results/{model}/<this>)."""
    if key in _PATHS:
        return _PATHS[key]
    if key in predictor_keys():
        return f"{key}/model"
    found = _drafter_of(key)
    if found is None:
        raise ValueError(f"unknown artefact {key!r} (known: {', '.join(model_keys())}, data)")
    drafter, target = found
    return drafter.path.format(target=target)


def artefact_option(key: str) -> str:
    """The command-line option naming artefact `key` (eval_speed, `spadec generate`):
    `--base` for the dense target, else the key with dashes."""
    return "--base" if key == "dense" else "--" + key.replace("_", "-")


def artefact_help(key: str, default: bool = True) -> str:
    """What artefact `key` is, for a command line's help (`default`: and where it lies
    in a results folder)."""
    where = ""
    if key == "dense":
        what = "dense target directory"
    elif key == "dllm":
        what = "SpaDec's D-LLM target directory"
    elif key == "dllm_baseline":
        users = ", ".join(n for n, m in METHODS.items() if m.target == "dllm_baseline")
        what = f"baseline D-LLM of {users}"
        where = " where the run trained one, else SpaDec's D-LLM"
    elif key in predictor_keys():
        trees = [d.description for d in DRAFTERS.values() if d.predictor == key]
        what = f"acceptance predictor of {' / '.join(trees)} trees"
    else:
        drafter, target = _drafter_of(key) or (None, None)
        if drafter is None:
            raise ValueError(f"unknown artefact {key!r}")
        what = f"{drafter.description} of the {target} target"
    return f"{what} (default <results>/{artefact_path(key)}{where})" if default else what
