"""D-LLM model invariants: dense when forced, cache == full forward, real skipping, Auto I/O."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM

from spadec.decoding.autoregressive import autoregressive_decode
from spadec.dllm.configuration import DLLMLlamaConfig, DLLMQwen2Config
from spadec.dllm.modeling import DLLMLlamaForCausalLM, DLLMQwen2ForCausalLM
from spadec.dllm.router import quantize_router_input
from spadec.runtime.cache import LayerSkipCache
from spadec.runtime.forward import chain_forward, gate_matrix

SHAPE = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    router_hidden=16,
    max_position_embeddings=256,
)
VARIANTS = {
    "llama-gqa": (DLLMLlamaConfig, DLLMLlamaForCausalLM, LlamaForCausalLM),
    "qwen2": (DLLMQwen2Config, DLLMQwen2ForCausalLM, Qwen2ForCausalLM),
}


def make(variant="llama-gqa", dtype=torch.float64, skip_half=True, **overrides):
    config_cls, model_cls, _ = VARIANTS[variant]
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**SHAPE, **overrides})).to(dtype).eval()
    if skip_half:  # routers that skip about half of the tokens
        for i in model.config.dynamic_layers():
            router = model.model.layers[i].router
            torch.nn.init.normal_(router.linear_2.weight, std=1.0)
            router.linear_2.bias.data.zero_()
    return model


def tokens(n, seed=1):
    return torch.randint(
        3, SHAPE["vocab_size"], (1, n), generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_routers_forced_to_execute_reproduce_the_dense_model(variant):
    model = make(variant, dtype=torch.float32)
    dense = VARIANTS[variant][2](model.config).eval()
    _, unexpected = dense.load_state_dict(model.state_dict(), strict=False)
    assert unexpected and all(".router." in k for k in unexpected)
    ids = tokens(24)
    with torch.no_grad():
        ours = model(ids, force_execute=True).logits
        ref = dense(ids).logits
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)  # fp32, different kernels


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bits", [4, None])
def test_cached_decoding_equals_the_full_forward_skips_included(variant, bits):
    model = make(variant, router_input_bits=bits)
    ids = tokens(30)
    with torch.no_grad():
        full = model(ids)
    dynamic = full.gates[0, :, model.config.dynamic_start_layer :]
    assert 0.2 < dynamic.mean() < 0.8, "the test needs real skips"
    cache = LayerSkipCache.empty(model.config.num_hidden_layers)
    chunks = [ids[:, :7], ids[:, 7:8], ids[:, 8:15], *ids[:, 15:].split(1, dim=1)]
    logits, gates = zip(*(_cached_step(model, c, cache) for c in chunks), strict=True)
    # fp64 weights; rotary tables are built in fp32 by transformers, hence not 1e-12.
    torch.testing.assert_close(torch.cat(logits, dim=1), full.logits, rtol=0, atol=1e-6)
    assert torch.equal(torch.cat(gates), full.gates[0])
    # Eviction: each layer keeps exactly the K/V of the tokens that executed it.
    assert cache.layer_lengths() == full.gates[0].sum(0).long().tolist()


def test_reserved_initial_positions_execute_every_layer():
    model = make(reserve_initials=3)
    with torch.no_grad():
        gates = model(tokens(16)).gates[0]
    assert gates[:3].eq(1).all()
    assert gates[:, : model.config.dynamic_start_layer].eq(1).all()


def test_a_skipped_layer_costs_no_compute():
    model = make()
    last = model.config.num_hidden_layers - 1
    model.model.layers[last].router.linear_2.bias.data = torch.tensor(
        [1e6, -1e6], dtype=torch.float64
    )
    tokens_computed = []
    model.model.layers[last].mlp.register_forward_hook(
        lambda _module, args, _out: tokens_computed.append(args[0].shape[1])
    )
    result = autoregressive_decode(model, tokens(4), 6)
    # Only the prompt's 2 reserved positions ran the layer (in the prefill); no decode step did.
    assert tokens_computed == [2]
    assert result.extra["layer_execution_rate"][last] == 0.0


def test_greedy_decode_is_the_models_own_greedy_output():
    model = make()
    prompt = tokens(6)
    got = autoregressive_decode(model, prompt, 10).output_ids
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            nxt = model(seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    assert got == seq[0, prompt.shape[1] :].tolist()


def test_sampled_decode_is_reproducible_with_a_seeded_generator():
    model = make()
    runs = [
        autoregressive_decode(
            model, tokens(5), 8, temperature=0.8, generator=torch.Generator().manual_seed(3)
        ).output_ids
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_router_quantisation_codes_and_invariance():
    x = torch.randn(3, 5, 64)
    codes = quantize_router_input(x, 4)
    assert codes.min() >= 0 and codes.max() <= 15 and torch.equal(codes, codes.round())
    assert torch.equal(quantize_router_input(2.5 * x + 1.0, 4), codes)  # affine per token
    assert torch.equal(quantize_router_input(x, None), x)


def test_training_mode_samples_routers_and_trains_them():
    model = make(dtype=torch.float32, skip_half=False).train()
    out = model(tokens(20), labels=tokens(20))
    out.loss.backward()
    grad = model.model.layers[model.config.dynamic_start_layer].router.linear_1.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="eval"):
        _cached_step(model, tokens(3), LayerSkipCache.empty(6))


def test_save_and_load_through_auto_classes(tmp_path):
    model = make("qwen2", dtype=torch.float32)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is DLLMQwen2ForCausalLM
    assert loaded.config.router_input_bits == 4 and loaded.config.dynamic_start_layer == 2
    ids = tokens(12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_import_spadec_is_enough_for_auto_loading(tmp_path):
    make("llama-gqa", dtype=torch.float32).save_pretrained(tmp_path)
    code = (
        "import sys, spadec\n"
        "assert 'transformers' not in sys.modules, 'import spadec must stay light'\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
        "print(type(m).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("DLLMLlamaForCausalLM")


def test_bad_router_settings_are_refused():
    with pytest.raises(ValueError, match="dynamic_start_layer"):
        DLLMLlamaForCausalLM(DLLMLlamaConfig(**{**SHAPE, "dynamic_start_layer": 9}))
    with pytest.raises(ValueError, match="router_input_bits"):
        DLLMLlamaForCausalLM(DLLMLlamaConfig(**{**SHAPE, "router_input_bits": 3}))


def _cached_step(model, ids, cache):
    """Cached forward of new tokens [1, n]: (logits [1, n, V], decisions [n, layers])."""
    logits, _, tp = chain_forward(model, ids[0], cache)
    return logits[None], gate_matrix(tp)
