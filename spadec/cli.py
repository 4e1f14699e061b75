"""`spadec` command line: the pipeline's stages without Snakemake, and helpers.

spadec check-config config.yaml [--model M --stage S]   validate; print resolved settings
spadec prepare-data  --configfile C --model M --out DIR
spadec prepare-base  --configfile C --model M --data DIR --out DIR [--ckpt DIR]
spadec launch --gpus N -- script.py ARGS                 = python -m spadec.launch
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spadec.config import STAGES, ConfigError, load_yaml, resolve_stage, validate_config

REPO = Path(__file__).resolve().parents[1]


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


def main(argv: list[str] | None = None) -> int:
    from spadec.logs import setup_logging

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:
        from spadec.launch import main as launch_main

        return launch_main(argv[1:])
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
    sub.add_parser("launch", help="start a stage script (see python -m spadec.launch -h)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"spadec: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
