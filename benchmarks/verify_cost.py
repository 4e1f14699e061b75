"""What verifying N tokens at once costs on the machine at hand: the wall time of one
cached target forward of N new tokens after a context of C tokens, in units of one `ar`
step (the same forward with N = 1).

    python benchmarks/verify_cost.py --model results/tiny/base --out docs/verify_cost_tiny
    python benchmarks/verify_cost.py --model results/smollm2-135m/base --context 512 \\
        --dtypes float32 bfloat16 --out /tmp/verify_cost_smollm2

Speculative decoding pays only where this ratio stays well below the tokens a step
commits (tau): on a GPU at batch 1 it stays near 1 up to tens of tokens; on a CPU it
grows with N. The forward is the decoders' own (`spadec.decoding.verify`: start_chain ->
run_layers -> finish_pass, the cache restored to C tokens before every repeat), or with
`--runtime hf` transformers' forward with a DynamicCache cropped back to C. The model is
loaded as the pipeline loads targets (`spadec.runtime.load.load_target`: any HF
directory, a D-LLM's included). Each point is the median of `--repeats` timed forwards
after warm-ups, with device syncs around each. Writes OUT.csv and OUT.png.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

SIZES = (1, 2, 4, 8, 16, 32, 64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours_forward(model, context: torch.Tensor):
    """A closure timing one forward of `n` new tokens after `context` [C] (our runtime)."""
    from spadec.runtime.cache import LayerSkipCache
    from spadec.runtime.forward import finish_pass, run_layers, start_chain

    layers = len(model.model.layers)
    cache = LayerSkipCache.empty(layers)
    tp = run_layers(model, start_chain(model, context, cache), cache, 0, layers)
    finish_pass(model, tp)
    cache.seen_tokens = context.numel()
    lengths, seen = cache.layer_lengths(), cache.seen_tokens

    def forward(tokens: torch.Tensor) -> None:
        cache.rewind(lengths, seen)  # the C-token cache again
        tp = run_layers(model, start_chain(model, tokens, cache), cache, 0, layers)
        finish_pass(model, tp)

    return forward


def hf_forward(model, context: torch.Tensor):
    """The same with transformers' forward and a DynamicCache cropped back to C."""
    from transformers import DynamicCache

    from spadec.compat import with_cache

    cache = DynamicCache(config=model.config)
    model(input_ids=context[None], logits_to_keep=1, **with_cache(cache))

    def forward(tokens: torch.Tensor) -> None:
        model(input_ids=tokens[None], **with_cache(cache))
        cache.crop(-tokens.numel())  # transformers 5: a negative count removes that many

    return forward


@torch.inference_mode()
def measure(model, sizes, context_len, repeats, warmup, runtime, seed=0) -> dict[int, float]:
    """n -> median seconds of one cached forward of n new tokens."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    context = torch.randint(3, vocab, (context_len,), generator=gen).to(device)
    forward = (ours_forward if runtime == "ours" else hf_forward)(model, context)
    new = {n: torch.randint(3, vocab, (n,), generator=gen).to(device) for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for n in sizes:
        for _ in range(warmup):
            forward(new[n])
    for _ in range(repeats):  # sizes interleaved: a slow spell hits every size alike
        for n in sizes:
            _sync(device)
            start = time.perf_counter()
            forward(new[n])
            _sync(device)
            times[n].append(time.perf_counter() - start)
    return {n: statistics.median(ts) for n, ts in times.items()}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo, as lscpu shows it), else the platform's."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def figure(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    sizes = sorted({r["n_new"] for r in rows})
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        sub = [r for r in rows if r["dtype"] == dtype]
        ax.plot(
            [r["n_new"] for r in sub],
            [r["ar_steps"] for r in sub],
            marker="o",
            label=f"{dtype} (1 step = {sub[0]['median_s'] * 1e3:.2f} ms)",
        )
    ax.plot(sizes, sizes, color="grey", ls=":", lw=1, label="proportional (N steps)")
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("new tokens in one cached forward (N)")
    ax.set_ylabel("wall time in ar steps (N = 1)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    from spadec.runtime.load import default_device, load_target

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="results/tiny/base", help="an HF model directory")
    parser.add_argument("--context", type=int, default=200, help="tokens already cached (C)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards per point")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runtime", choices=["ours", "hf"], default="ours")
    parser.add_argument("--device", default=None, help="default: the GPU if any, else CPU")
    parser.add_argument("--out", required=True, help="path stem: writes OUT.csv and OUT.png")
    args = parser.parse_args(argv)
    if 1 not in args.sizes:
        parser.error("--sizes must include 1 (the unit: one ar step)")

    device = torch.device(args.device) if args.device else default_device()
    rows = []
    for dtype in args.dtypes:
        model, _ = load_target(args.model, dtype, device)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and args.context + max(args.sizes) > limit:
            parser.error(f"context + largest N exceeds the model's context of {limit}")
        medians = measure(model, args.sizes, args.context, args.repeats, args.warmup, args.runtime)
        for n in sorted(medians):
            rows.append(
                {
                    "dtype": dtype,
                    "n_new": n,
                    "context": args.context,
                    "median_s": medians[n],
                    "ar_steps": medians[n] / medians[1],
                    "repeats": args.repeats,
                    "runtime": args.runtime,
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                }
            )
        del model
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} thread(s)"
    )
    figure(
        rows,
        out.with_suffix(".png"),
        f"{args.model}: one cached forward of N tokens after {args.context}\n({where})",
    )
    for r in rows:
        print(
            f"{r['dtype']:>9} N={r['n_new']:>3}: {r['median_s'] * 1e3:8.3f} ms  {r['ar_steps']:6.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
