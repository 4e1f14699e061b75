"""CUDA checks, run by scripts/gpu_check.sh on a GPU machine (skipped elsewhere).

Kept to what a bare GPU image has (torch, transformers, accelerate): no datasets, no
deepspeed, no snakemake.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _tiny_llama(dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


def test_greedy_decode_on_cuda_matches_cpu():
    from spadec.decoding.autoregressive import autoregressive_decode

    model = _tiny_llama()
    ids = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(1))
    cpu = autoregressive_decode(model, ids, 24)
    gpu = autoregressive_decode(model.cuda(), ids.cuda(), 24)
    assert gpu.output_ids == cpu.output_ids
    assert gpu.target_forwards == 24


def test_pretrain_steps_on_cuda(tmp_path):
    from spadec.base.pretrain import pretrain
    from spadec.data.stdlib_docs import iter_stdlib_documents, iter_stdlib_records
    from spadec.io import write_jsonl

    records = [
        r for _, r in zip(range(400), iter_stdlib_records(max_response_chars=200), strict=False)
    ]
    write_jsonl(tmp_path / "sft.jsonl", records)
    write_jsonl(
        tmp_path / "corpus_train.jsonl",
        [d for _, d in zip(range(40), iter_stdlib_documents(), strict=False)],
    )
    settings = {
        "pretrain": dict(
            vocab_size=512,
            hidden_size=128,
            num_layers=8,
            num_heads=4,
            num_kv_heads=4,
            intermediate_size=256,
            max_position_embeddings=256,
            tie_embeddings=False,
            seq_len=64,
            batch_size=8,
            steps=20,
            lr=3e-3,
            min_lr_ratio=0.1,
            warmup_steps=2,
            weight_decay=0.1,
            grad_clip=1.0,
            mixed_precision="bf16",
            chat_share=0.7,
            checkpoint_every=10,
            log_every=5,
        )
    }
    model, _, metrics = pretrain(settings, tmp_path, tmp_path / "ckpt")
    assert next(model.parameters()).is_cuda
    assert metrics["loss_history"][-1]["loss"] < metrics["loss_history"][0]["loss"]


def test_launcher_leases_a_gpu_for_the_child(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent("""
        import os, torch
        print("VISIBLE", os.environ["CUDA_VISIBLE_DEVICES"], torch.cuda.device_count())
    """)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env["SPADEC_GPU_IDS"] = ",".join(str(i) for i in range(torch.cuda.device_count()))
    env["SPADEC_GPU_LEASE_DIR"] = str(tmp_path / "leases")
    proc = subprocess.run(
        [sys.executable, "-m", "spadec.launch", "--gpus", "1", "--", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "VISIBLE 0 1" in proc.stdout
    assert "leased GPU(s) 0" in proc.stderr


def test_dllm_cached_decoding_on_cuda_matches_its_full_forward():
    from spadec.dllm.configuration import DLLMLlamaConfig
    from spadec.dllm.modeling import DLLMLlamaForCausalLM
    from spadec.runtime.cache import LayerSkipCache
    from spadec.runtime.forward import chain_forward, gate_matrix

    torch.manual_seed(0)
    cfg = DLLMLlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        router_hidden=32,
    )
    model = DLLMLlamaForCausalLM(cfg).cuda().eval()
    for i in cfg.dynamic_layers():  # routers that skip about half of the tokens
        torch.nn.init.normal_(model.model.layers[i].router.linear_2.weight, std=1.0)
        model.model.layers[i].router.linear_2.bias.data.zero_()
    ids = torch.randint(3, 512, (1, 24), device="cuda")
    with torch.no_grad():
        full = model(ids)
    cache = LayerSkipCache.empty(cfg.num_hidden_layers)
    passes = [chain_forward(model, c, cache) for c in (ids[0, :10], *ids[0, 10:].split(1))]
    assert torch.equal(torch.cat([gate_matrix(tp) for _, _, tp in passes]), full.gates[0])
    logits = torch.cat([lg for lg, _, _ in passes])[None]
    torch.testing.assert_close(logits, full.logits, rtol=1e-4, atol=1e-4)


def test_eagle2_on_cuda_is_lossless_and_matches_cpu():
    """Greedy EAGLE-2 on CUDA (random head) == greedy ar on CUDA == EAGLE-2 on the CPU
    (fp32: bf16 kernels round differently for different batch shapes, so exact equality
    is only promised where the arithmetic is exact enough to keep argmax ties apart)."""
    dtype = torch.float32
    from spadec.decoding.autoregressive import autoregressive_decode
    from spadec.decoding.draft import TreeParams
    from spadec.decoding.eagle2 import eagle2_decode
    from spadec.eagle.head import new_head

    model = _tiny_llama(dtype)
    head = new_head(model).to(dtype).eval()
    ids = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(1))
    params = TreeParams(24, 4, 4)
    gpu_model, gpu_head = model.cuda(), head.cuda()
    ar = autoregressive_decode(gpu_model, ids.cuda(), 32)
    ours = eagle2_decode(gpu_model, gpu_head, ids.cuda(), params, 32)
    assert ours.output_ids == ar.output_ids
    cpu = eagle2_decode(model.cpu(), head.cpu(), ids, params, 32)
    assert cpu.output_ids == ours.output_ids
