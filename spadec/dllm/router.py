"""The per-layer router ("dynamic decision module") and its input quantisation."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Column 0 of the router's logits is "skip", column 1 "execute".
SKIP, EXECUTE = 0, 1
# The freshly built router's output bias (skip, execute): it starts by executing nearly
# everything (p_execute = sigmoid(1.9) ~ 0.87), as the published recipe does.
INITIAL_BIAS = (0.1, 2.0)


def quantize_router_input(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    """Asymmetric per-token quantisation to integer codes 0..2^bits-1 (returned as floats).

    The codes themselves feed the router (no de-quantisation): the decision becomes
    invariant to a per-token affine rescaling of x, and near-identical hidden states (such
    as sibling tokens of a draft tree) map to identical codes and so to one decision.
    `round` has no gradient, so with quantisation no gradient reaches x through the router.
    """
    if bits is None:
        return x
    levels = 2**bits - 1
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    scale = (hi - lo) / levels + 1e-7
    return torch.clamp(torch.round((x - lo) / scale), 0, levels)


class Router(nn.Module):
    """Linear(d -> r) -> RMSNorm(r) -> SiLU -> Linear(r -> 2): skip/execute logits per token."""

    def __init__(self, hidden_size: int, router_hidden: int, input_bits: int | None, eps: float):
        super().__init__()
        self.input_bits = input_bits
        self.linear_1 = nn.Linear(hidden_size, router_hidden)
        self.norm = nn.RMSNorm(router_hidden, eps=eps)
        self.linear_2 = nn.Linear(router_hidden, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.linear_1.weight, std=self.linear_1.in_features**-0.5)
        nn.init.zeros_(self.linear_1.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.normal_(self.linear_2.weight, std=self.linear_2.in_features**-0.5 * 0.1)
        with torch.no_grad():
            self.linear_2.bias.copy_(torch.tensor(INITIAL_BIAS))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., 2] in float32 (decisions must not flip with the model's dtype)."""
        x = quantize_router_input(hidden.float(), self.input_bits)
        z = F.linear(x, self.linear_1.weight.float(), self.linear_1.bias.float())
        z = F.silu(F.rms_norm(z, (z.shape[-1],), self.norm.weight.float(), self.norm.eps))
        return F.linear(z, self.linear_2.weight.float(), self.linear_2.bias.float())


def hard_decision(logits: torch.Tensor) -> torch.Tensor:
    """Inference: execute iff p_execute >= 0.5 (a tie executes). Returns float {0, 1}."""
    return (logits[..., EXECUTE] >= logits[..., SKIP]).float()


def gumbel_decision(logits: torch.Tensor, tau: float = 1.0, noise: float = 1.0) -> torch.Tensor:
    """Training: a hard one-hot sample forward, the soft sample's gradient backward.

    `noise` scales the Gumbel noise. At 1 (published) a router executes with probability
    p_execute, so routers that all say "p = 2/3" meet a 2/3 rate in training and then run
    every token at inference (p >= 0.5). Lowered towards 0 over training, the training
    decisions become the inference ones, and a rate can only be met by routers that tell
    tokens apart.
    """
    if noise == 1.0:
        return F.gumbel_softmax(logits, tau=tau, hard=True)[..., EXECUTE]
    gumbels = -torch.empty_like(logits).exponential_().log()
    soft = ((logits + noise * gumbels) / tau).softmax(-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return (hard - soft.detach() + soft)[..., EXECUTE]
