"""D-LLM against its dense base on held-out data: perplexity, executed-layer shares, and
greedy decoding speed, the two decoders interleaved prompt by prompt in one run."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from spadec.base.chat import dialogue_text, prompt_ids
from spadec.data.prepare import sample_prompts_file
from spadec.decoding.autoregressive import autoregressive_decode
from spadec.dllm.data import IGNORE, encode_example
from spadec.dllm.routing import routing_measures
from spadec.io import read_jsonl
from spadec.logs import progress
from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.forward import chain_forward, gate_matrix

log = logging.getLogger(__name__)


@torch.inference_mode()
def score(
    model, sequences: list[list[int]], is_dllm: bool, answer_starts: list[int] | None = None
) -> dict:
    """Perplexity over the sequences; for a D-LLM also the executed shares of every scored
    token, and the routing measures of the answer tokens (from `answer_starts[i]` on, past
    the reserved initials): the tokens training holds at the target share and decoding
    generates (prompt tokens are free to run every layer)."""
    nll, count, gates = 0.0, 0, []
    starts = answer_starts or [0] * len(sequences)
    for seq in progress(sequences, desc="score", leave=False):
        ids = torch.tensor([seq], device=next(model.parameters()).device)
        out = model(input_ids=ids)
        logits = out.logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += len(seq) - 1
        if is_dllm:
            gates.append(out.gates[0].float())
    result = {"perplexity": math.exp(nll / max(count, 1)), "tokens": count}
    if gates:
        g = torch.cat(gates)
        result["executed_share"] = g.mean().item()
        result["layer_execution_rate"] = [round(x, 4) for x in g.mean(0).tolist()]
        reserve = model.config.reserve_initials
        routed = torch.cat(
            [
                seq_gates[max(reserve, start) :]
                for seq_gates, start in zip(gates, starts, strict=True)
            ]
        )
        result["routing"] = routing_measures(routed, model.config.dynamic_layers())
    return result


@torch.inference_mode()
def cache_consistency(model, prompt: torch.Tensor, continuation: list[int]) -> dict:
    """Cached decoding (prompt, then one token at a time) against one full forward of the
    same sequence: the largest logit difference and whether every skip decision agrees."""
    seq = torch.cat([prompt, torch.tensor([continuation], device=prompt.device)], dim=1)
    full = model(input_ids=seq)
    cache = LayerSkipCache.empty(model.config.num_hidden_layers)
    chunks = [prompt[0], *seq[0, prompt.shape[1] :].split(1)]
    parts = [chain_forward(model, chunk, cache) for chunk in chunks]
    logits = torch.cat([logits for logits, _, _ in parts])[None]
    gates = torch.cat([gate_matrix(tp) for _, _, tp in parts])
    return {
        "cache_vs_full_max_abs_diff": (logits - full.logits).abs().max().item(),
        "cache_vs_full_same_gates": bool(torch.equal(gates, full.gates[0])),
    }


def heldout_dialogues(
    tokenizer, data_dir: Path, window: int, max_tokens: int
) -> tuple[list[list[int]], list[int]]:
    """Chat-formatted held-out pairs (each cut to `window` tokens, up to `max_tokens` in
    all) and where each one's answer starts."""
    seqs, starts, total = [], [], 0
    for rec in read_jsonl(Path(data_dir) / "sft_heldout.jsonl"):
        # the training encoding: the dialogue's ids, labels marking the (last) answer
        example = encode_example(tokenizer, rec, window)
        if example is None:  # no answer token within the window: scored, not routed
            text = dialogue_text(tokenizer, rec)
            seqs.append(tokenizer(text, add_special_tokens=False)["input_ids"][:window])
            starts.append(len(seqs[-1]))
        else:
            seqs.append(example["input_ids"])
            starts.append(next(i for i, t in enumerate(example["labels"]) if t != IGNORE))
        total += len(seqs[-1])
        if total >= max_tokens:
            break
    return seqs, starts


def evaluate_dllm(dense, dllm, tokenizer, data_dir: str | Path, settings: dict) -> dict:
    data_dir = Path(data_dir)
    ev = settings["eval"]
    dense.eval()
    dllm.eval()
    seqs, starts = heldout_dialogues(tokenizer, data_dir, ev["max_seq_len"], ev["max_ppl_tokens"])
    dense_score = score(dense, seqs, is_dllm=False)
    dllm_score = score(dllm, seqs, is_dllm=True, answer_starts=starts)
    log.info(
        "held-out perplexity: dense %.2f, D-LLM %.2f (executed share %.3f); "
        "%d of %d dynamic layers token-dependent",
        dense_score["perplexity"],
        dllm_score["perplexity"],
        dllm_score["executed_share"],
        dllm_score["routing"]["token_dependent_layers"],
        dllm_score["routing"]["dynamic_layers"],
    )

    prompts = read_jsonl(sample_prompts_file(data_dir))[: ev["decode_prompts"]]
    device = next(dense.parameters()).device
    warm = torch.tensor([prompt_ids(tokenizer, "Hello")], device=device)
    autoregressive_decode(dense, warm, 4)
    autoregressive_decode(dllm, warm, 4)
    totals = {"dense": [0, 0.0], "dllm": [0, 0.0]}
    decode_shares, samples = [], []
    for rec in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, rec["turns"][0])], device=device)
        n = ev["max_new_tokens"]
        # Same number of tokens for both (no early stop), so the speeds compare like for like.
        d = autoregressive_decode(dense, ids, n)
        s = autoregressive_decode(dllm, ids, n)
        totals["dense"][0] += d.new_tokens
        totals["dense"][1] += d.wall_s
        totals["dllm"][0] += s.new_tokens
        totals["dllm"][1] += s.wall_s
        decode_shares.append(s.extra.get("executed_share", 1.0))
        samples.append(
            {
                "prompt": rec["turns"][0],
                "dense": tokenizer.decode(d.output_ids, skip_special_tokens=True),
                "dllm": tokenizer.decode(s.output_ids, skip_special_tokens=True),
            }
        )
    first = torch.tensor([prompt_ids(tokenizer, prompts[0]["turns"][0])], device=device)
    consistency = cache_consistency(
        dllm, first, autoregressive_decode(dllm, first, 16).output_ids[:-1]
    )
    dense_tps = totals["dense"][0] / totals["dense"][1]
    dllm_tps = totals["dllm"][0] / totals["dllm"][1]
    return {
        "heldout_ppl_dense": round(dense_score["perplexity"], 3),
        "heldout_ppl_dllm": round(dllm_score["perplexity"], 3),
        "ppl_ratio": round(dllm_score["perplexity"] / dense_score["perplexity"], 4),
        "heldout_tokens": dllm_score["tokens"],
        "executed_share": round(dllm_score["executed_share"], 4),
        "target_share": dllm.config.target_share,
        "layer_execution_rate": dllm_score["layer_execution_rate"],
        "routing": dllm_score["routing"],
        "decode_executed_share": round(sum(decode_shares) / len(decode_shares), 4),
        "greedy_tokens_per_s_dense": round(dense_tps, 2),
        "greedy_tokens_per_s_dllm": round(dllm_tps, 2),
        "decode_speedup": round(dllm_tps / dense_tps, 3),
        **consistency,
        "device": str(device),
        "samples": samples,
    }
