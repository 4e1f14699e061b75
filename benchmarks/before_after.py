"""Two source trees on one set of artefacts: every eval method's tokens/s before and after
a change, side by side, and whether its output token ids stay identical on every prompt.

    python benchmarks/before_after.py --results /tmp/fresh/results/tiny
    python benchmarks/before_after.py --before /tmp/before --after . \\
        --results /tmp/fresh/results/tiny --bench heldout --methods ar eagle2 \\
        --repeats 2 --prompts 4 --out /tmp/core_refactor.md

Each run is the tree's own `workflow_scripts/eval_speed.py` (what rule eval_speed runs),
started as a subprocess with cwd = the tree and PYTHONPATH = the tree, so that the tree's
`spadec` shadows the editable install; a probe checks which `spadec` files each tree
really imports before anything is timed. A run times one method: a copy of the model's
eval.speed.json names only that method (with `compare_ats_modes` off; the other ATS mode
is its own method), but eval_speed always adds the plain decoding of the method's target
as its lossless reference (`catalog.with_references`), so a run may time a reference as
well: only the rows of the method under test count. References the full eval would add
(`dllm_robust` for `spadec_eagle2`) are methods of their own here, timed in their own runs.

The trees alternate per method in ABBA order (before, after, after, before; `--repeats`
cycles) so that a slow drift of the machine falls on both equally. Per method the table
gives the median over the runs of tokens/s (new tokens / wall over the prompts, as
`spadec.eval.speed.summarize`), after/before, and how many prompts gave identical output
ids in every run of both trees (and equal to the stored eval's records, when the results
folder has them). OMP_NUM_THREADS and CUDA_VISIBLE_DEVICES pass through from the
environment. Writes OUT (markdown) and OUT with .csv, and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # this script's tree: the default `after`
DEFAULT_BEFORE = Path("/tmp/before")
SCRIPT = Path("workflow_scripts") / "eval_speed.py"

# Run in each tree exactly as eval_speed will be (a script outside the tree's root, cwd =
# the tree, the same PYTHONPATH): which files `spadec` resolves to, and the methods the
# full eval would run. The second part is best effort: a refactor may move those names.
PROBE = """
import importlib.util, json, sys
out = {"modules": {}}
for name in ("spadec", "spadec.eval.bench", "spadec.decoding"):
    spec = importlib.util.find_spec(name)
    out["modules"][name] = spec.origin if spec else None
try:
    from spadec.decoding.catalog import separate_baseline
    from spadec.eval.bench import bench_methods

    speed, ats_mode, paths = json.loads(sys.argv[1])
    out["methods"] = bench_methods(speed, ats_mode, separate_baseline(paths))
except (ImportError, AttributeError, TypeError, KeyError, ValueError) as err:
    out["methods_error"] = repr(err)
print(json.dumps(out))
"""


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def model_paths(results: Path) -> dict[str, Path]:
    """eval_speed's model arguments for one results folder, as rule eval_speed passes them:
    the baseline D-LLM (and its head) is a folder of its own only when the config trains a
    separate one (rules/common.smk `baseline_dllm`), else SpaDec's D-LLM stands in."""
    baseline = "dllm_baseline" if (results / "dllm_baseline" / "hf").is_dir() else "dllm"
    return {
        "base": results / "base",
        "dllm": results / "dllm" / "hf",
        "dllm-baseline": results / baseline / "hf",
        "head-dense": results / "eagle" / "dense" / "head",
        "head-dllm": results / "eagle" / "dllm" / "head",
        "head-dllm-baseline": results / "eagle" / baseline / "head",
        "predictor": results / "predictor" / "model",
        "data": results / "data",
    }


def tree_env(tree: Path) -> dict[str, str]:
    """The caller's environment (threads, devices) with `tree` first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    return env


def probe(python: str, tree: Path, work: Path, speed: dict, ats_mode: str, paths: dict) -> dict:
    """The `spadec` files `tree` imports (refusing a tree that imports another's) and the
    methods its full eval would run (None when its code no longer offers that)."""
    script = work / "probe.py"
    script.write_text(PROBE, encoding="utf-8")
    # the names evaluate_bench sees: `base` is the dense target, dashes are underscores
    names = {k.replace("-", "_"): str(v) for k, v in paths.items()}
    names["dense"] = names.pop("base")
    arg = json.dumps([speed, ats_mode, names])
    proc = subprocess.run(
        [python, str(script), arg],
        cwd=tree,
        env=tree_env(tree),
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, origin in info["modules"].items():
        if origin is None or not Path(origin).resolve().is_relative_to(tree):
            raise SystemExit(f"{tree}: `{name}` imports from {origin}, not from this tree")
    return info


def all_methods(speed: dict, ats_mode: str, found: list[list[str] | None]) -> list[str]:
    """Every method the full eval runs, as the trees' probes listed them (in order, union of
    both); without a probe's answer: the configured methods and the other ATS mode (the
    references then appear only as rows of other runs)."""
    out = []
    for methods in found:
        out += [m for m in methods or [] if m not in out]
    if out:
        return out
    out = list(speed["methods"])
    if speed.get("compare_ats_modes") and "spadec_eagle2" in out:
        out.append("spadec_eagle2_" + ("steer" if ats_mode == "prune" else "prune"))
    return out


def prompt_data(data: Path, bench: str, prompts: int | None, work: Path) -> Path:
    """The data folder a run reads: the original, or one whose benchmark file keeps only
    the first `prompts` questions (eval_speed itself has no such setting)."""
    if prompts is None:
        return data
    cut = work / "data"
    cut.mkdir()
    for item in data.iterdir():  # the other files as they are, should a tree read them
        if item.name != f"eval_{bench}.jsonl":
            (cut / item.name).symlink_to(item)
    lines = (data / f"eval_{bench}.jsonl").read_text(encoding="utf-8").splitlines(True)
    (cut / f"eval_{bench}.jsonl").write_text(
        "".join([line for line in lines if line.strip()][:prompts]), encoding="utf-8"
    )
    return cut


def run_once(
    python: str, tree: Path, method: str, args, paths: dict, speed: dict, out: Path
) -> dict:
    """One eval_speed run of `tree` timing `method`: its tokens/s, output ids per prompt
    and the run's device info."""
    cfg = dict(speed, methods=[method], compare_ats_modes=False)
    cfg_path = out.parent / f"{out.name}.speed.json"
    cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    cmd = [python, str(tree / SCRIPT), "--model", args.model, "--bench", args.bench]
    cmd += ["--speed", str(cfg_path), "--decode", str(args.results / "config/eagle.decode.json")]
    cmd += ["--ats", str(args.results / "config/predictor.decode.json")]
    for key, path in paths.items():
        cmd += [f"--{key}", str(path)]
    cmd += ["--out", str(out)]
    log = out.parent / f"{out.name}.log"
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(
            cmd, cwd=tree, env=tree_env(tree), stdout=fh, stderr=subprocess.STDOUT
        )
    wall = time.perf_counter() - start
    if proc.returncode:
        tail = "".join(log.read_text(encoding="utf-8").splitlines(True)[-30:])
        raise SystemExit(f"{shlex.join(cmd)}\nfailed ({proc.returncode}); log {log}:\n{tail}")
    rows = [r for r in read_jsonl(out / "records.jsonl") if r["method"] == method]
    if not rows:
        raise SystemExit(f"{out}/records.jsonl has no rows of {method}")
    wall_s = sum(r["wall_s"] for r in rows)
    info = json.loads((out / "run_info.json").read_text(encoding="utf-8"))
    return {
        "tokens_per_s": sum(r["new_tokens"] for r in rows) / wall_s,
        "outputs": {str(r["prompt_id"]): r["output_ids"] for r in rows},
        "others": sorted({r["method"] for r in read_jsonl(out / "records.jsonl")} - {method}),
        "device": info.get("device", {}),
        "process_s": wall,
    }


def compare(runs: dict[str, list[dict]], stored: dict[str, list] | None) -> dict:
    """Prompts whose output ids are the same in every run of both trees (and, with
    `stored`, equal to the stored eval's), plus any tree that disagrees with itself."""
    prompts = sorted(runs["before"][0]["outputs"])
    same = stored_same = 0
    unstable = set()
    for pid in prompts:
        seen = {tree: [r["outputs"].get(pid) for r in rs] for tree, rs in runs.items()}
        for tree, outs in seen.items():
            if any(o != outs[0] for o in outs):
                unstable.add(tree)
        every = seen["before"] + seen["after"]
        if all(o == every[0] for o in every):
            same += 1
            if stored is not None and stored.get(pid) == every[0]:
                stored_same += 1
    return {
        "prompts": len(prompts),
        "identical": same,
        "stored": stored_same if stored is not None else None,
        "unstable": sorted(unstable),
    }


def fmt_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "before tok/s", "after tok/s", "after/before", "runs/tree"]
    header += ["identical outputs", "= stored eval", "also ran"]
    rows = []
    for method, res in results.items():
        b, a = res["before"], res["after"]
        cmp = res["compare"]
        ident = f"{cmp['identical']}/{cmp['prompts']}"
        ident = ("yes " if cmp["identical"] == cmp["prompts"] else "NO ") + ident
        if cmp["unstable"]:
            ident += f" (varies within {', '.join(cmp['unstable'])})"
        stored = "-" if cmp["stored"] is None else f"{cmp['stored']}/{cmp['prompts']}"
        rows.append(
            [
                method,
                f"{b:.1f}",
                f"{a:.1f}",
                f"{a / b:.3f}",
                str(res["runs"]),
                ident,
                stored,
                " ".join(res["others"]) or "-",
            ]
        )
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, default=DEFAULT_BEFORE, help="tree before")
    parser.add_argument("--after", type=Path, default=ROOT, help="tree after (this repo)")
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "results" / "tiny",
        help="one model's trained artefacts (results/{model}, with config/)",
    )
    parser.add_argument("--model", help="the model's name (default: the results folder's)")
    parser.add_argument("--bench", default="heldout", help="benchmark (data/eval_<bench>.jsonl)")
    parser.add_argument("--methods", nargs="+", help="a subset (default: all the eval runs)")
    parser.add_argument("--repeats", type=int, default=1, help="ABBA cycles per method")
    parser.add_argument("--prompts", type=int, help="only the first N prompts (quick check)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the runs")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "core_refactor.md", help="markdown (+ .csv)"
    )
    parser.add_argument("--keep", type=Path, help="keep every run's output in this folder")
    args = parser.parse_args()
    args.before, args.after = args.before.resolve(), args.after.resolve()
    args.results = args.results.resolve()
    args.model = args.model or args.results.name
    if args.repeats < 1 or (args.prompts is not None and args.prompts < 1):
        parser.error("--repeats and --prompts must be >= 1")
    for tree in (args.before, args.after):
        if not (tree / SCRIPT).is_file():
            parser.error(f"{tree}: no {SCRIPT}")
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: not empty")
    started = time.perf_counter()

    speed = json.loads((args.results / "config" / "eval.speed.json").read_text(encoding="utf-8"))
    ats = json.loads(
        (args.results / "config" / "predictor.decode.json").read_text(encoding="utf-8")
    )
    paths = model_paths(args.results)
    trees = {"before": args.before, "after": args.after}

    with tempfile.TemporaryDirectory(prefix="before_after.") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        paths["data"] = prompt_data(paths["data"], args.bench, args.prompts, work)
        probes = {
            name: probe(args.python, tree, work, speed, ats["ats_mode"], paths)
            for name, tree in trees.items()
        }
        for name, info in probes.items():
            print(f"{name}: spadec from {Path(info['modules']['spadec']).parent}", flush=True)
        methods = all_methods(speed, ats["ats_mode"], [p.get("methods") for p in probes.values()])
        if args.methods:
            unknown = sorted(set(args.methods) - set(methods))
            if unknown:
                parser.error(f"not among the eval's methods {methods}: {', '.join(unknown)}")
            methods = [m for m in methods if m in args.methods]

        order = ["before", "after", "after", "before"] * args.repeats
        total, done = len(methods) * len(order), 0
        runs = {m: {"before": [], "after": []} for m in methods}
        for method in methods:
            for name in order:
                done += 1
                out = work / f"{method}.{name}.{len(runs[method][name])}"
                res = run_once(args.python, trees[name], method, args, paths, speed, out)
                runs[method][name].append(res)
                print(
                    f"[{done}/{total}] {method:<20} {name:<6} {res['tokens_per_s']:8.1f} tok/s"
                    f"  ({res['process_s']:.1f} s process, {len(res['outputs'])} prompts)",
                    flush=True,
                )

    stored_path = args.results / "eval" / args.bench / "records.jsonl"
    stored_rows = read_jsonl(stored_path) if stored_path.is_file() else None
    results = {}
    for method, rs in runs.items():
        stored = None
        if stored_rows is not None:
            stored = {
                str(r["prompt_id"]): r["output_ids"] for r in stored_rows if r["method"] == method
            }
        results[method] = {
            tree: statistics.median(r["tokens_per_s"] for r in rs[tree]) for tree in rs
        } | {
            "runs": len(rs["before"]),
            "compare": compare(rs, stored or None),
            "others": sorted({o for tree in rs.values() for r in tree for o in r["others"]}),
            "all_runs": {tree: [r["tokens_per_s"] for r in rs[tree]] for tree in rs},
        }

    device = runs[methods[0]]["after"][0]["device"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    header, rows = fmt_rows(results)
    table = markdown(header, rows)
    argv = shlex.join([Path(sys.executable).name, *sys.argv])
    doc = [
        "# Decoding core refactor: before / after",
        "",
        f"    {argv}",
        "",
        f"- before: `{args.before}`, after: `{args.after}`",
        f"- artefacts: `{args.results}` (model {args.model}), benchmark {args.bench}, "
        f"{results[methods[0]]['compare']['prompts']} prompts, "
        f"max_new_tokens {speed['max_new_tokens']}, temperature {speed['temperature']}",
        f"- machine: {os.cpu_count()} cores ({cores} usable), torch threads "
        f"{device.get('torch_threads')}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"device {', '.join(device.get('cuda', [])) or 'cpu'}",
        f"- {args.repeats} ABBA cycle(s) per method: {2 * args.repeats} runs per tree, "
        "one eval_speed process per run; tokens/s = median over the runs",
        "",
        table,
        "`identical outputs`: prompts whose output ids are equal in every run of both trees; "
        "`= stored eval`: of those, equal to the results folder's eval records (the full "
        "side-by-side run); `also ran`: references eval_speed added to the run (untimed here).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc), encoding="utf-8")
    with args.out.with_suffix(".csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*header, "before runs tok/s", "after runs tok/s"])
        for row, res in zip(rows, results.values(), strict=True):
            runs_b, runs_a = (
                " ".join(f"{v:.1f}" for v in res["all_runs"][t]) for t in ("before", "after")
            )
            writer.writerow([*row, runs_b, runs_a])
    print()
    print(table)
    print(
        f"wrote {args.out} and {args.out.with_suffix('.csv')} in {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
