"""Copy the small files of a finished run into a folder that can be committed as a reference.

    python scripts/export_reference.py --workdir . --out results/reference/smollm2-135m

Kept: results/tables/, results/figures/, and per model its resolved settings (config/*.json),
every metrics.json and run_info.json, the eval records (records.jsonl, one line per turn),
and the rules' Snakemake benchmark files summed up in timings.tsv. Weights, datasets and
features stay out. The layout matches a results root, so `spadec compare` reads it.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

MAX_BYTES = 2_000_000  # a reference is small files only


def export(workdir: Path, out: Path) -> list[Path]:
    results = workdir / "results"
    if not (results / "tables" / "speedup.csv").is_file():
        raise SystemExit(
            f"{results}/tables/speedup.csv not found: run the workflow to the end first"
        )
    wanted = [*results.glob("tables/*"), *results.glob("figures/*")]
    for model_dir in sorted(p for p in results.iterdir() if (p / "config").is_dir()):
        wanted += model_dir.glob("config/*.json")
        wanted += model_dir.rglob("metrics.json")
        wanted += model_dir.rglob("run_info.json")
        wanted += model_dir.glob("eval/*/records.jsonl")
    copied = []
    for src in sorted(set(wanted)):
        if not src.is_file() or src.stat().st_size > MAX_BYTES:
            continue
        dst = out / src.relative_to(results)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied.append(dst)
    copied.append(_timings(workdir / "logs", out / "timings.tsv"))
    return copied


def _timings(logs: Path, path: Path) -> Path:
    """One row per job: its Snakemake benchmark file's wall time and peak memory."""
    rows = []
    for bench in sorted(logs.rglob("*.benchmark.tsv")):
        with bench.open() as fh:
            for rec in csv.DictReader(fh, delimiter="\t"):
                job = bench.relative_to(logs).as_posix().removesuffix(".benchmark.tsv")
                rows.append((job, rec["s"], rec["max_rss"]))
    with path.open("w") as fh:
        fh.write("job\twall_s\tmax_rss_mb\n")
        fh.writelines(f"{j}\t{s}\t{m}\n" for j, s, m in rows)
        total = sum(float(s) for _, s, _ in rows)
        fh.write(f"TOTAL\t{total:.1f}\t\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=".", help="the run's working directory")
    parser.add_argument("--out", required=True, help="reference folder to (re)write")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    files = export(Path(args.workdir), out)
    size = sum(f.stat().st_size for f in files)
    print(f"{len(files)} files, {size / 1e6:.2f} MB in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
