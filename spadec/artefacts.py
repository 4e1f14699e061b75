"""Bad artefacts on disk (model, EAGLE head and predictor directories): one error type
whose message is one line naming the file and what is wrong, and the cheap checks the
loaders run before the real load.

The real loads (transformers, safetensors, torch) fail with their own exception types and
messages that rarely name the file; a user handed a traceback from deep inside them cannot
tell a truncated download from a mismatched head. torch and safetensors are imported
inside the functions: `spadec.cli` imports this module, and `spadec check-config` must
stay cheap.
"""

from __future__ import annotations

import json
from pathlib import Path


class ArtefactError(ValueError):
    """An artefact that cannot be used; the message is one line naming the file."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library messages run to many lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_config_json(path: str | Path) -> dict:
    """A directory's config.json as a dict; a missing, non-JSON or non-object file is an
    ArtefactError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtefactError(f"{path}: not valid JSON ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise ArtefactError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_safetensors(path: str | Path) -> None:
    """Read the header only (cheap at any size): a truncated or garbage file fails here,
    named, before a loader reads it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise ArtefactError(f"{path}: unreadable safetensors file ({first_line(err)})") from None


def load_safetensors(path: str | Path) -> dict:
    """All tensors of a safetensors file (on the CPU), or an ArtefactError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise ArtefactError(f"{path}: unreadable safetensors file ({first_line(err)})") from None


def check_matches(what: str, path: str | Path, ours: int, target: int, target_path) -> None:
    """`<path>: <what> <ours> does not match the target's <target> (<target_path>)`."""
    if ours != target:
        raise ArtefactError(
            f"{path}: {what} {ours} does not match the target's {target} ({target_path})"
        )
