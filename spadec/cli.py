"""`spadec` command line: the pipeline's stages without Snakemake, and helpers.

spadec check-config config.yaml [--model M --stage S]   validate; print resolved settings
spadec prepare-data  --configfile C --model M --out DIR
spadec prepare-base  --configfile C --model M --data DIR --out DIR [--ckpt DIR]
spadec generate --method M --results results/tiny --prompt "..."   decode one prompt; print
                                                          tokens/s, tau, acceptance histogram
spadec compare RESULTS_A RESULTS_B                       two runs' tables side by side,
                                                          their settings diffed
spadec import-medusa SRC --out DIR                       published Medusa heads (.pt read
                                                          with weights_only, or .safetensors)
spadec launch --gpus N -- script.py ARGS                 = python -m spadec.launch
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spadec.argtypes import int_at_least, non_negative_float, non_negative_int, positive_int
from spadec.artefacts import ArtefactError
from spadec.config import STAGES, ConfigError, load_yaml, resolve_stage, validate_config
from spadec.decoding.catalog import (
    ATS_MODES,
    artefact_help,
    artefact_option,
    method_names,
    model_keys,
)
from spadec.decoding.context import PromptTooLongError
from spadec.decoding.defaults import (
    DEFAULT_DEPTH,
    DEFAULT_TOP_K,
    DEFAULT_TOTAL_TOKENS,
    MEDUSA_DECODE_DEFAULTS,
)
from spadec.decoding.medusa_trees import TREES

REPO = Path(__file__).resolve().parents[1]
WARMUP_TOKENS = 16  # enough for every kernel of a decoding step to have run once


def _load(configfile: str) -> dict:
    return validate_config(load_yaml(configfile))


def cmd_check_config(args) -> int:
    config = _load(args.configfile)
    models = [args.model] if args.model else list(config["models"])
    stages = [args.stage] if args.stage else list(STAGES)
    out = {m: {s: resolve_stage(config, m, s) for s in stages} for m in models}
    print(json.dumps(out, indent=2))
    return 0


def cmd_prepare_data(args) -> int:
    from spadec.data.prepare import prepare_data
    from spadec.io import atomic_dir

    settings = resolve_stage(_load(args.configfile), args.model, "data")
    with atomic_dir(args.out) as tmp:
        print(json.dumps(prepare_data(settings, tmp, args.prompts), indent=2))
    return 0


def cmd_prepare_base(args) -> int:
    from spadec.base.prepare import prepare_base

    settings = resolve_stage(_load(args.configfile), args.model, "base")
    ckpt = args.ckpt or f"ckpt/{args.model}/base"
    metrics = prepare_base(settings, args.data, args.out, ckpt)
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if k != "samples"}, indent=2))
    return 0


def cmd_import_dllm(args) -> int:
    from spadec.dllm.importer import DLLMImportError, import_dllm

    bits = None if args.router_input_bits == "none" else int(args.router_input_bits)
    try:
        info = import_dllm(args.src, args.out, args.tokenizer, bits, args.dtype)
    except DLLMImportError as err:
        print(f"spadec: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


def cmd_generate(args) -> int:
    import torch

    from spadec.base.chat import prompt_ids
    from spadec.decoding.draft import TreeParams
    from spadec.eval.bench import results_paths
    from spadec.eval.methods import Models, run_method
    from spadec.io import read_json

    results = Path(args.results) if args.results else None
    paths = {k: str(v) for k, v in results_paths(results).items()} if results else {}
    paths.update({k: getattr(args, k) for k in model_keys() if getattr(args, k)})
    medusa_cfg = results / "config" / "medusa.decode.json" if results else None
    medusa = read_json(medusa_cfg) if medusa_cfg and medusa_cfg.is_file() else {}
    if args.medusa_tree:
        medusa["tree"] = args.medusa_tree
    stage_cfg = results / "config" / "eagle.decode.json" if results else None
    tree = read_json(stage_cfg) if stage_cfg and stage_cfg.is_file() else {}
    models = Models.load(
        [args.method],
        paths,
        args.dtype,
        ats_mode=args.ats_mode,
        draft_vocab=tree.get("draft_vocab"),
        medusa_decode=medusa,
    )
    tok = models.tokenizer
    ids = torch.tensor([prompt_ids(tok, args.prompt)], device=models.device)
    params = TreeParams(
        args.total_tokens or tree.get("total_tokens", DEFAULT_TOTAL_TOKENS),
        args.depth if args.depth is not None else tree.get("depth", DEFAULT_DEPTH),
        args.top_k or tree.get("top_k", DEFAULT_TOP_K),
    )

    def decode(max_new_tokens):
        gen = torch.Generator().manual_seed(args.seed)
        return run_method(
            args.method,
            models,
            ids,
            max_new_tokens,
            params,
            tok.eos_token_id,
            args.temperature,
            gen,
        )

    # The first call pays one-off costs (kernel selection, allocator growth, lazy
    # initialisation): timed alone it reads several times slower than the eval's warm
    # figure on the same model. A short untimed call first, as the eval's warm-up does.
    if args.warmup:
        decode(min(args.max_new_tokens, WARMUP_TOKENS))
    res = decode(args.max_new_tokens)
    print(tok.decode(res.output_ids, skip_special_tokens=True))
    timing = "after one warm-up call" if args.warmup else "cold: first call, no warm-up"
    print(
        f"[{args.method}] {res.new_tokens} tokens in {res.wall_s:.3f} s = "
        f"{res.tokens_per_s:.1f} tokens/s ({timing}), {res.target_forwards} target forwards",
        file=sys.stderr,
    )
    extra = {k: v for k, v in res.extra.items() if not isinstance(v, list)}
    if "accept_histogram" in extra:  # a tree method (a peer's tau has no histogram)
        print(
            f"  tau {extra['tau']:.2f}, accepted drafts per step: {extra['accept_histogram']}",
            file=sys.stderr,
        )
    print(
        "  " + json.dumps({k: v for k, v in extra.items() if k not in ("tau", "accept_histogram")}),
        file=sys.stderr,
    )
    return 0


def cmd_compare(args) -> int:
    from spadec.eval.compare import CompareError, compare

    try:
        print(compare(args.results_a, args.results_b))
    except CompareError as err:
        print(f"spadec compare: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from spadec.logs import setup_logging

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:
        from spadec.launch import main as launch_main

        return launch_main(argv[1:])
    if argv[:1] == ["import-medusa"]:
        from spadec.medusa.importer import main as import_medusa_main

        return import_medusa_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="spadec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-config", help="validate a config; print resolved stage settings")
    p.add_argument("configfile")
    p.add_argument("--model")
    p.add_argument("--stage", choices=STAGES)
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("prepare-data", help="build one model's datasets")
    p.add_argument("--configfile", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", default=str(REPO / "data" / "prompts"))
    p.set_defaults(func=cmd_prepare_data)
    p = sub.add_parser("prepare-base", help="build, save and evaluate one base model")
    p.add_argument("--configfile", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the model's data directory (prepare-data)")
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", help="resumable state (default ckpt/<model>/base)")
    p.set_defaults(func=cmd_prepare_base)
    p = sub.add_parser("import-dllm", help="import a published D-LLM checkpoint")
    p.add_argument(
        "src", help="folder with consolidated.00.pth + model_args.json, or a published HF folder"
    )
    p.add_argument("--out", required=True, help="our HF directory to write")
    p.add_argument("--tokenizer", help="tokenizer directory (required for consolidated.00.pth)")
    p.add_argument(
        "--router-input-bits",
        default="4",
        choices=["4", "8", "none"],
        help="router input quantisation the routers were trained with (SpaDec: 4)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=cmd_import_dllm)
    p = sub.add_parser("generate", help="decode one prompt with one method; print counters")
    p.add_argument("--method", required=True, choices=method_names())
    p.add_argument("--prompt", required=True, help="the user turn (the chat template is applied)")
    p.add_argument("--results", help="a model's results dir (results/<model>): default model paths")
    for key in model_keys():  # the catalog's artefacts: targets, drafters, predictor
        p.add_argument(artefact_option(key), dest=key, metavar="DIR", help=artefact_help(key))
    p.add_argument("--ats-mode", default="prune", choices=list(ATS_MODES))
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument(
        "--total-tokens",
        type=int_at_least(2),
        help="tree size, root included, >= 2 "
        f"(default: <results>/config/eagle.decode.json, else {DEFAULT_TOTAL_TOKENS})",
    )
    p.add_argument(
        "--depth",
        type=non_negative_int,
        help="expansion steps after the first draft level, 0 = one level "
        f"(default: as above, else {DEFAULT_DEPTH})",
    )
    p.add_argument(
        "--top-k",
        type=positive_int,
        help=f"children per node (default: as above, else {DEFAULT_TOP_K})",
    )
    p.add_argument(
        "--medusa-tree",
        choices=list(TREES),
        help="a Medusa method's tree (default: <results>/config/medusa.decode.json, else "
        f"{MEDUSA_DECODE_DEFAULTS['tree']})",
    )
    p.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"run one untimed {WARMUP_TOKENS}-token call before the timed one (default: on)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("compare", help="two runs' tables side by side, their settings diffed")
    p.add_argument("results_a", help="a results root (results/, results/reference/<name>/)")
    p.add_argument("results_b")
    p.set_defaults(func=cmd_compare)
    sub.add_parser("launch", help="start a stage script (see python -m spadec.launch -h)")
    sub.add_parser("import-medusa", help="import published Medusa heads (SRC --out DIR)")
    args = parser.parse_args(argv)
    setup_logging()
    # Bad input (a config, an artefact, a prompt) ends in one line naming it, exit 2;
    # a traceback is kept for what is a bug.
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"spadec {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except (ArtefactError, PromptTooLongError) as err:
        print(f"spadec {args.command}: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        if args.command != "generate":
            raise
        print(f"spadec {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
