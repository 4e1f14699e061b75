"""Greedy decoding speed of our cached autoregressive loop (`ar`) vs transformers'
`generate`, on an HF model or a random Llama (no pipeline run needed; the decoding
methods side by side on a run's models: `decoding_speed.py`).

    python benchmarks/ar_vs_generate.py --model results/tiny/base --prompts 8 --max-new-tokens 64
    python benchmarks/ar_vs_generate.py --random h2048-l16 --device cuda --dtype bfloat16

Both methods decode the same prompts, interleaved prompt by prompt after a warm-up, with
device syncs around every timed block; the figure to read is the ratio, not the absolute
tokens/s (which depend on the machine). Outputs must agree token for token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

RANDOM_SHAPES = {
    "h256-l8": dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4
    ),
    "h1024-l12": dict(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16
    ),
    "h2048-l16": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16
    ),
}


def load(args):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, args.dtype)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=8192, max_position_embeddings=4096, **RANDOM_SHAPES[args.random]
        )
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.to(args.device).eval()


def prompts(model, n: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    return [torch.randint(3, vocab, (1, length), generator=gen) for _ in range(n)]


def main(argv=None) -> int:
    from spadec.decoding.autoregressive import autoregressive_decode, sync

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="an HF model directory")
    source.add_argument(
        "--random", choices=sorted(RANDOM_SHAPES), help="a random Llama of this shape"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    model = load(args)
    device = torch.device(args.device)
    batch = [p.to(device) for p in prompts(model, args.prompts, args.prompt_length)]
    autoregressive_decode(model, batch[0], 8)  # warm-up both paths
    model.generate(batch[0], max_new_tokens=8, do_sample=False, min_new_tokens=8)
    rows = []
    for ids in batch:
        ours = autoregressive_decode(model, ids, args.max_new_tokens)
        sync(device)
        start = time.perf_counter()
        ref = model.generate(
            ids,
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.max_new_tokens,
            do_sample=False,
        )
        sync(device)
        hf_s = time.perf_counter() - start
        ref_ids = ref[0, ids.shape[1] :].tolist()
        rows.append(
            {
                "ar_tokens_per_s": ours.tokens_per_s,
                "generate_tokens_per_s": len(ref_ids) / hf_s,
                "same_output": ours.output_ids == ref_ids,
            }
        )
    ratio = statistics.mean(r["ar_tokens_per_s"] / r["generate_tokens_per_s"] for r in rows)
    result = {
        "model": args.model or f"random {args.random}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "ar_tokens_per_s": round(statistics.mean(r["ar_tokens_per_s"] for r in rows), 1),
        "generate_tokens_per_s": round(
            statistics.mean(r["generate_tokens_per_s"] for r in rows), 1
        ),
        "ar_over_generate": round(ratio, 3),
        "outputs_agree": sum(r["same_output"] for r in rows),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
