"""What a D-LLM's sparsity targets imply per dynamic layer, checked without torch so that
a config can be refused at start-up (spadec.config) as well as before training."""

from __future__ import annotations

from collections.abc import Sequence

# How far a rate profile's implied share may lie from target_share (rates are typed by
# hand with two decimals).
PROFILE_SHARE_TOLERANCE = 0.01


def dynamic_layer_rate(target: float, num_layers: int, dynamic_start: int) -> float:
    """The execution rate of each dynamic layer that gives `target` over all layers."""
    dynamic = num_layers - dynamic_start
    rate = (target * num_layers - dynamic_start) / dynamic if dynamic > 0 else -1.0
    if not 0 < rate <= 1:
        raise ValueError(
            f"target_share {target} cannot be met with {dynamic_start} static layers of "
            f"{num_layers}: the dynamic layers would have to run at rate {rate:.3f}"
        )
    return rate


def check_layer_profile(
    profile: Sequence[float], target: float, num_layers: int, dynamic_start: int
) -> None:
    """A rate profile has one rate per dynamic layer and gives `target` over all layers."""
    dynamic = num_layers - dynamic_start
    if len(profile) != dynamic:
        raise ValueError(
            f"layer_rate_profile has {len(profile)} rates; the model has {dynamic} dynamic "
            f"layers ({num_layers} layers from dynamic_start_layer {dynamic_start})"
        )
    share = (dynamic_start + sum(profile)) / num_layers
    if abs(share - target) > PROFILE_SHARE_TOLERANCE:
        raise ValueError(
            f"layer_rate_profile {list(profile)} gives an executed share of {share:.3f}, "
            f"not target_share {target}"
        )
