"""Train D-LLM variants side by side and measure how their routers decide.

Each variant is the config's `dllm` settings with a few keys changed; every variant starts
from the same base model and data (a finished `prepare_base` / `prepare_data`), is trained
with the pipeline's own `finetune`, merged in memory and scored on the held-out dialogues:
perplexity against the dense base (whole dialogues), executed share and the routing
measures of `spadec.dllm.routing` (answer tokens, as eval_dllm measures them). One row per variant goes to a CSV and a Markdown table.

    python benchmarks/routing_sweep.py --configfile config.yaml --model tiny \\
        --results results --out docs/routing_sweep_tiny \\
        --variant published: --variant batch:share_constraint=batch \\
        --variant layer_3ep:share_constraint=layer,epochs=3

A variant is `name:key=value,key=value` (values parsed as YAML; an empty list = the
config as it is). Its adapter is kept under `<work>/<name>/` (default
`<results>/<model>/routing_sweep/`), so a rerun skips its training.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pandas as pd
import torch
import yaml

from spadec.config import load_schema, load_yaml, resolve_stage, validate_config
from spadec.dllm.build import dllm_from_base
from spadec.dllm.evaluate import heldout_dialogues, score
from spadec.dllm.train import finetune
from spadec.io import read_json, write_json
from spadec.logs import setup_logging

log = logging.getLogger("routing_sweep")
DLLM_DEFAULTS = {
    key: spec.get("default") for key, spec in load_schema()["$defs"]["dllm"]["properties"].items()
}
COLUMNS = [
    "variant",
    "changes",
    "ppl_ratio",
    "executed_share",
    "share_all_tokens",
    "token_dependent_layers",
    "dynamic_layers",
    "modal_set_disagreement",
    "modal_set_distance",
    "distinct_layer_sets",
    "token_share_std",
    "layer_execution_rate",
    "train_wall_s",
]


def parse_variant(text: str) -> tuple[str, dict]:
    name, sep, body = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"variant {text!r} is not name:key=value,...")
    changes = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", body)):  # not inside [..]
        key, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"variant {name}: {item!r} is not key=value")
        changes[key.strip()] = yaml.safe_load(value)
    return name, changes


def run_variant(name, changes, base_settings, base_dir, data_dir, runs_dir, dense_ppl, heldout):
    from peft import PeftModel

    settings = {**base_settings, **changes}
    unknown = set(changes) - set(base_settings)
    if unknown:
        raise SystemExit(f"variant {name}: unknown dllm keys {sorted(unknown)}")
    adapter = runs_dir / name / "adapter"
    if (adapter / "metrics.json").exists():
        # reuse an adapter only if it was trained with these settings (keys it predates
        # took their schema default)
        trained = read_json(adapter / "run_info.json")["settings"]
        differ = sorted(
            k
            for k in settings
            if k != "eval" and trained.get(k, DLLM_DEFAULTS.get(k)) != settings[k]
        )
        if differ:
            raise SystemExit(f"{adapter} was trained with other {differ}: rename the variant")
    else:
        finetune(settings, base_dir, data_dir, adapter, runs_dir / name / "ckpt")
    train = read_json(adapter / "metrics.json")
    model = dllm_from_base(base_dir, settings)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    seqs, starts = heldout
    result = score(model, seqs, is_dllm=True, answer_starts=starts)
    routing = result["routing"]
    row = {
        "variant": name,
        "changes": ", ".join(f"{k}={v}" for k, v in changes.items()) or "(config)",
        "ppl_ratio": round(result["perplexity"] / dense_ppl, 4),
        **{k: routing[k] for k in COLUMNS if k in routing},
        "share_all_tokens": round(result["executed_share"], 4),
        "train_wall_s": train["train_wall_s"],
    }
    row["layer_execution_rate"] = " ".join(f"{x:.2f}" for x in routing["layer_execution_rate"])
    write_json(runs_dir / name / "routing.json", {"row": row, "routing": routing})
    return row


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--results", default=Path("results"), type=Path)
    parser.add_argument("--out", required=True, type=Path, help="writes <out>.csv and <out>.md")
    parser.add_argument("--variant", action="append", type=parse_variant, required=True)
    parser.add_argument(
        "--work", type=Path, help="adapters (default: <results>/<model>/routing_sweep)"
    )
    args = parser.parse_args()
    setup_logging()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    config = validate_config(load_yaml(args.configfile))
    base_settings = resolve_stage(config, args.model, "dllm")
    base_dir = args.results / args.model / "base"
    data_dir = args.results / args.model / "data"
    for path in (base_dir / "config.json", data_dir / "sft.jsonl"):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run prepare_base / prepare_data first")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    ev = base_settings["eval"]
    heldout = heldout_dialogues(tokenizer, data_dir, ev["max_seq_len"], ev["max_ppl_tokens"])
    dense = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    dense_ppl = score(dense, heldout[0], is_dllm=False)["perplexity"]
    log.info("dense held-out perplexity %.3f over %d dialogues", dense_ppl, len(heldout[0]))

    runs_dir = args.work or args.results / args.model / "routing_sweep"
    rows = []
    for name, changes in args.variant:
        rows.append(
            run_variant(
                name, changes, base_settings, base_dir, data_dir, runs_dir, dense_ppl, heldout
            )
        )
        log.info("%s: %s", name, rows[-1])
        table = pd.DataFrame(rows, columns=COLUMNS)
        table.to_csv(args.out.with_suffix(".csv"), index=False)
        args.out.with_suffix(".md").write_text(
            f"dense held-out perplexity {dense_ppl:.3f}\n\n" + table.to_markdown(index=False) + "\n"
        )


if __name__ == "__main__":
    main()
