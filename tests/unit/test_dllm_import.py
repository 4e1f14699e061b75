"""Importer: synthetic checkpoints in the published formats -> our HF dir -> the logits of an
independent reference forward computed from the raw tensors."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from spadec.base.tokenizer import train_bpe_tokenizer
from spadec.dllm.importer import DLLMImportError, import_dllm

DIM, LAYERS, HEADS, FFN, VOCAB, RH, START = 32, 4, 4, 48, 300, 8, 1


def raw_tensors(seed=0) -> dict[str, torch.Tensor]:
    """A D-LLM in the published native naming (`consolidated.00.pth`)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    t = {
        "embed_tokens.weight": r(VOCAB, DIM, std=1.0),
        "norm.weight": 1 + r(DIM, std=0.1),
        "lm_head.weight": r(VOCAB, DIM),
    }
    for i in range(LAYERS):
        p = f"layers.{i}."
        for name in ("q", "k", "v", "o"):
            t[p + f"self_attn.{name}_proj.weight"] = r(DIM, DIM)
        t[p + "self_attn.rotary_emb.inv_freq"] = torch.zeros(DIM // HEADS // 2)  # ignored
        t[p + "mlp.gate_proj.weight"] = r(FFN, DIM)
        t[p + "mlp.up_proj.weight"] = r(FFN, DIM)
        t[p + "mlp.down_proj.weight"] = r(DIM, FFN)
        t[p + "input_layernorm.weight"] = 1 + r(DIM, std=0.1)
        t[p + "post_attention_layernorm.weight"] = 1 + r(DIM, std=0.1)
        if i >= START:
            t[p + "router.linear_1.weight"] = r(RH, DIM, std=0.3)
            t[p + "router.linear_1.bias"] = r(RH)
            t[p + "router.norm.weight"] = 1 + r(RH, std=0.1)
            t[p + "router.linear_2.weight"] = r(2, RH, std=1.0)
            t[p + "router.linear_2.bias"] = torch.zeros(2)
    return t


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def reference_logits(
    t: dict, ids: torch.Tensor, bits=4, reserve=2
) -> tuple[torch.Tensor, torch.Tensor]:
    """The published D-LLM inference, written from the spec (not from our model code)."""
    n = ids.shape[0]
    hd = DIM // HEADS
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(n).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(x):  # x [H, n, hd], rotate-half convention
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    h = t["embed_tokens.weight"][ids]
    gates = torch.ones(n, LAYERS)
    for i in range(LAYERS):
        p = f"layers.{i}."
        w = torch.ones(n)
        if i >= START:
            x = h
            if bits:
                lo, hi = x.min(-1, keepdim=True).values, x.max(-1, keepdim=True).values
                s = (hi - lo) / (2**bits - 1) + 1e-7
                x = torch.clamp(torch.round((x - lo) / s), 0, 2**bits - 1)
            z = x @ t[p + "router.linear_1.weight"].T + t[p + "router.linear_1.bias"]
            z = F.silu(rms(z, t[p + "router.norm.weight"]))
            g = torch.softmax(
                z @ t[p + "router.linear_2.weight"].T + t[p + "router.linear_2.bias"], -1
            )
            w = (g[:, 1] >= 0.5).float()
            w[:reserve] = 1.0
        gates[:, i] = w
        xn = rms(h, t[p + "input_layernorm.weight"])
        q, k, v = (
            (xn @ t[p + f"self_attn.{m}_proj.weight"].T).view(n, HEADS, hd).transpose(0, 1)
            for m in "qkv"
        )
        q, k = rope(q), rope(k)
        scores = q @ k.transpose(1, 2) / hd**0.5
        allowed = torch.ones(n, n).tril().bool() & w.bool()[None, :]  # causal + eviction
        scores = scores.masked_fill(~allowed, float("-inf"))
        a = (torch.softmax(scores, -1) @ v).transpose(0, 1).reshape(n, DIM)
        mid = h + a @ t[p + "self_attn.o_proj.weight"].T
        mn = rms(mid, t[p + "post_attention_layernorm.weight"])
        mlp = F.silu(mn @ t[p + "mlp.gate_proj.weight"].T) * (mn @ t[p + "mlp.up_proj.weight"].T)
        out = mid + mlp @ t[p + "mlp.down_proj.weight"].T
        h = w[:, None] * out + (1 - w[:, None]) * h
    return rms(h, t["norm.weight"]) @ t["lm_head.weight"].T, gates


MODEL_ARGS = {
    "dim": DIM,
    "n_layers": LAYERS,
    "n_heads": HEADS,
    "n_kv_heads": None,
    "vocab_size": VOCAB,
    "multiple_of": 16,
    "ffn_dim_multiplier": None,
    "norm_eps": 1e-5,
    "max_batch_size": 32,
    "max_seq_len": 128,
    "lora_rank": 8,
    "dynamic_active_target": 0.5,
    "dynamic_start_layer": START,
    "dynamic_router_hdim": RH,
    "dynamic_reserve_initials": 2,
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(["some text to learn from"] * 30, vocab_size=280).save_pretrained(out)
    return out


def _check(out_dir, tensors):
    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert type(model).__name__ == "DLLMLlamaForCausalLM"
    ids = torch.randint(0, VOCAB, (24,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(ids[None])
    ref_logits, ref_gates = reference_logits(tensors, ids)
    assert 0 < ref_gates[:, START:].mean() < 1, "the synthetic routers must skip some tokens"
    assert torch.equal(out.gates[0], ref_gates)
    torch.testing.assert_close(out.logits[0], ref_logits, rtol=1e-4, atol=1e-4)


def test_native_consolidated_checkpoint(tmp_path, tokenizer_dir):
    src = tmp_path / "native"
    src.mkdir()
    tensors = raw_tensors()
    torch.save(
        {k: v.to(torch.bfloat16) if ".router." not in k else v for k, v in tensors.items()},
        src / "consolidated.00.pth",
    )
    (src / "model_args.json").write_text(json.dumps(MODEL_ARGS))
    import_dllm(src, tmp_path / "ours", tokenizer_dir)
    as_stored = {
        k: (v.to(torch.bfloat16).float() if ".router." not in k else v) for k, v in tensors.items()
    }
    _check(tmp_path / "ours", as_stored)


def test_published_hf_folder(tmp_path, tokenizer_dir):
    from safetensors.torch import save_file

    src = tmp_path / "published_hf"
    src.mkdir()
    tensors = raw_tensors(seed=1)
    hf = {
        ("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v
        for k, v in tensors.items()
        if not k.endswith("inv_freq")
    }
    save_file(hf, src / "model.safetensors")
    (src / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama_d-llm",
                "architectures": ["LlamaDLLMForCausalLM"],
                "hidden_size": DIM,
                "intermediate_size": FFN,
                "num_attention_heads": HEADS,
                "num_hidden_layers": LAYERS,
                "num_key_value_heads": HEADS,
                "rms_norm_eps": 1e-5,
                "vocab_size": VOCAB,
                "rope_theta": 10000.0,
                "max_position_embeddings": 128,
                "dynamic_start_layer": START,
                "dynamic_router_hdim": RH,
                "dynamic_reserve_initials": 2,
                "dynamic_active_target": 0.5,
                "lora_rank": 8,
            }
        )
    )
    import_dllm(src, tmp_path / "ours", tokenizer_dir)
    _check(tmp_path / "ours", tensors)


def test_unrecognised_inputs_are_refused(tmp_path, tokenizer_dir):
    with pytest.raises(DLLMImportError, match="neither consolidated.00.pth nor config.json"):
        import_dllm(tmp_path, tmp_path / "out", tokenizer_dir)
    (tmp_path / "consolidated.00.pth").write_bytes(b"")
    with pytest.raises(DLLMImportError, match="model_args.json"):
        import_dllm(tmp_path, tmp_path / "out", tokenizer_dir)
