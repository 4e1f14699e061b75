"""Load DeepSpeed checkpoints without executing pickle.

DeepSpeed's torch checkpoint engine loads with `weights_only=False`, which runs arbitrary
pickled code. Its files hold tensors, plain containers and a few of its own small classes
(loss scalers, the ZeRO stage enum, fragment addresses); with those allow-listed,
`weights_only=True` reads them, so a tampered checkpoint fails to load instead of running
code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _allowed_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def weights_only_checkpoint_loads() -> Iterator[None]:
    """Within the block, DeepSpeed's checkpoint loads use `weights_only=True`."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (
        TorchCheckpointEngine,
    )

    original = TorchCheckpointEngine.load

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)

    TorchCheckpointEngine.load = load
    try:
        yield
    finally:
        TorchCheckpointEngine.load = original
