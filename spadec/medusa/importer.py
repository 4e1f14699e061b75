"""Import published Medusa heads (`medusa_lm_head.pt` / `medusa_lm_head.safetensors`)
into our heads directory (spadec.medusa.heads: config.json + model.safetensors).

    python -m spadec.medusa.importer SRC --out DIR [--target TARGET_DIR | --vocab-size N]

SRC is the file itself or a folder holding one. The geometry is read from the tensor
names, never from the published config.json (whose `medusa_num_heads` can be wrong):
`{h}.{b}.linear.weight` / `.bias` are the blocks of head h, `{h}.{n}.weight` its
projection (Medusa-1). Files without projections are Medusa-2-format heads, which draft
through the target's LM head; their vocabulary is not in the file and comes from
--vocab-size, --target (its config.json) or a `vocab_size` in the config.json next to
SRC. Pickled files are read with `torch.load(weights_only=True)` (tensors only; no pickle
code runs). Anything malformed is one MedusaImportError line naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
import struct
import sys
import zipfile
from pathlib import Path

import torch

from spadec.argtypes import positive_int
from spadec.artefacts import ArtefactError, first_line, load_safetensors, read_config_json
from spadec.medusa.heads import MedusaConfig, MedusaError, write_heads
from spadec.provenance import RunInfo

log = logging.getLogger(__name__)

SOURCE_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
# `medusa_head.` prefixes the same names inside a whole MedusaModel's state dict.
_NAME = re.compile(r"^(?:medusa_head\.)?(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")


# What torch.load raises on a file that is truncated or not a torch file at all (its
# weights-only unpickler reads garbage byte by byte).
_UNREADABLE = (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    zipfile.BadZipFile,
)


class MedusaImportError(MedusaError):
    """The input is not Medusa heads in a published format; one line naming the file."""


def find_source(src: str | Path) -> Path:
    """The heads file SRC names: the file itself, or the one a folder holds."""
    src = Path(src)
    if src.is_dir():
        for name in SOURCE_FILES:
            if (src / name).is_file():
                return src / name
        raise MedusaImportError(f"{src}: no {' or '.join(SOURCE_FILES)} in this folder")
    if not src.is_file():
        raise MedusaImportError(f"{src}: file not found")
    return src


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's state dict (tensors only), or a MedusaImportError naming it."""
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(path)
        except ArtefactError as err:
            raise MedusaImportError(str(err)) from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise MedusaImportError(
            f"{path}: unknown heads file type (expected .safetensors or "
            f"{', '.join(PICKLE_SUFFIXES)})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if reason.startswith("Unsupported global"):  # a class or function: never run it
            raise MedusaImportError(
                f"{path}: holds objects other than tensors (torch.load weights_only=True "
                f"refused it: {reason})"
            ) from None
        raise MedusaImportError(f"{path}: unreadable torch file ({reason})") from None
    except _UNREADABLE as err:  # truncated, garbage, or not a torch file at all
        reason = f"{type(err).__name__}: {first_line(err).split('. ')[0]}"
        raise MedusaImportError(f"{path}: unreadable torch file ({reason})") from None
    if not isinstance(state, dict):
        raise MedusaImportError(f"{path}: expected a state dict, got {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise MedusaImportError(f"{path}: entry {bad[0]!r} is not a named tensor")
    return state


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """The cause inside torch's many-line weights-only refusal, on one line."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = match.group(1) if match else first_line(err)
    return reason.split(". ")[0].rstrip(".").strip()


def parse_heads(
    state: dict[str, torch.Tensor], path: Path, vocab_size: int | None = None
) -> tuple[MedusaConfig, dict[str, torch.Tensor]]:
    """(config, state under our names) of a published heads state dict.

    Heads and blocks are counted from the names; the shapes must agree with one another
    (and the vocabulary with `vocab_size` where one is given)."""
    if not state:
        raise MedusaImportError(f"{path}: no tensors")
    parts: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for name, tensor in state.items():
        match = _NAME.match(name)
        if match is None:
            raise MedusaImportError(f"{path}: unexpected tensor {name!r} (not a Medusa head)")
        h, b, kind = int(match.group(1)), int(match.group(2)), match.group(3)
        if not tensor.is_floating_point():
            raise MedusaImportError(f"{path}: {name} is {tensor.dtype}, not a float tensor")
        parts.setdefault(h, {}).setdefault(b, {})[kind] = tensor
    num_heads = max(parts) + 1
    absent = [h for h in range(num_heads) if h not in parts]
    if absent:
        raise MedusaImportError(
            f"{path}: head {absent[0]} missing (found up to head {num_heads - 1})"
        )
    layouts = {h: _head_layout(h, parts[h], path) for h in range(num_heads)}
    num_blocks, own = layouts[0]
    for h, layout in layouts.items():
        if layout != (num_blocks, own):
            raise MedusaImportError(
                f"{path}: head {h} has {layout[0]} block(s){' + projection' * layout[1]}, "
                f"head 0 {num_blocks}{' + projection' * own} (heads must agree)"
            )
    out = {}
    hidden = None
    vocab = None
    for h in range(num_heads):
        for b in range(num_blocks):
            w, bias = parts[h][b]["linear.weight"], parts[h][b]["linear.bias"]
            hidden = hidden or w.shape[-1]
            if tuple(w.shape) != (hidden, hidden) or tuple(bias.shape) != (hidden,):
                raise MedusaImportError(
                    f"{path}: {h}.{b}.linear has weight {tuple(w.shape)} and bias "
                    f"{tuple(bias.shape)}, expected ({hidden}, {hidden}) and ({hidden},)"
                )
            out[f"{h}.{b}.linear.weight"], out[f"{h}.{b}.linear.bias"] = w, bias
        if own:
            proj = parts[h][num_blocks]["weight"]
            hidden = hidden or (proj.shape[-1] if proj.dim() == 2 else None)
            vocab = vocab or (proj.shape[0] if proj.dim() == 2 else None)
            if proj.dim() != 2 or tuple(proj.shape) != (vocab, hidden):
                raise MedusaImportError(
                    f"{path}: {h}.{num_blocks}.weight has shape {tuple(proj.shape)}, expected "
                    f"({vocab}, {hidden})"
                )
            out[f"{h}.{num_blocks}.weight"] = proj
    if own and vocab_size is not None and vocab_size != vocab:
        raise MedusaImportError(
            f"{path}: the projections have {vocab} rows, the target's vocabulary is {vocab_size}"
        )
    if not own:
        if vocab_size is None:
            raise MedusaImportError(
                f"{path}: Medusa-2-format heads (no projection) do not record the "
                "vocabulary: pass --target TARGET_DIR or --vocab-size N"
            )
        vocab = vocab_size
    config = MedusaConfig(
        num_heads=num_heads,
        num_blocks=num_blocks,
        hidden_size=int(hidden),
        vocab_size=int(vocab),
        own_projection=own,
    )
    return config, {k: v.contiguous() for k, v in out.items()}


def _head_layout(h: int, blocks: dict[int, dict[str, torch.Tensor]], path: Path):
    """(number of blocks, has a projection) of head h: blocks 0..n-1, then maybe one
    projection at index n."""
    count = max(blocks) + 1
    projections = [b for b, kinds in blocks.items() if "weight" in kinds]
    if len(projections) > 1 or (projections and projections[0] != count - 1):
        raise MedusaImportError(
            f"{path}: head {h} has a projection at index {projections[0]}, "
            f"only its last module ({count - 1}) may be one"
        )
    own = bool(projections)
    num_blocks = count - 1 if own else count
    for b in range(num_blocks):
        kinds = blocks.get(b, {})
        missing = [k for k in ("linear.weight", "linear.bias") if k not in kinds]
        if missing:
            raise MedusaImportError(f"{path}: {h}.{b}.{missing[0]} missing")
    if own and set(blocks[num_blocks]) != {"weight"}:
        raise MedusaImportError(f"{path}: {h}.{num_blocks} mixes a projection and a block")
    return num_blocks, own


def _vocab_from(target: str | Path | None, vocab_size: int | None, src: Path) -> int | None:
    if vocab_size is not None:
        return vocab_size
    if target is not None:
        path = Path(target) / "config.json"
        fields = read_config_json(path)
        if not isinstance(fields.get("vocab_size"), int):
            raise MedusaImportError(f"{path}: no integer vocab_size")
        return fields["vocab_size"]
    beside = src.parent / "config.json"
    if beside.is_file():
        fields = _published_config(beside)
        if isinstance(fields.get("vocab_size"), int):
            return fields["vocab_size"]
    return None


def _published_config(path: Path) -> dict:
    try:
        return read_config_json(path)
    except ArtefactError as err:
        log.warning("ignoring %s", err)
        return {}


def import_medusa(
    src: str | Path,
    out_dir: str | Path,
    *,
    target: str | Path | None = None,
    vocab_size: int | None = None,
) -> dict:
    """Convert published heads at `src` into our heads directory `out_dir` (atomically).

    Returns what was imported (format, counts, shapes, source). `target` (a model
    directory) or `vocab_size` gives the vocabulary that Medusa-2-format files lack, and
    is checked against Medusa-1 projections."""
    path = find_source(src)
    vocab = _vocab_from(target, vocab_size, path)
    config, state = parse_heads(read_tensors(path), path, vocab)
    published = path.parent / "config.json"
    fields = _published_config(published) if published.is_file() else {}
    stated = fields.get("medusa_num_heads")
    if stated is not None and stated != config.num_heads:
        log.warning(
            "%s says medusa_num_heads %s; %s holds %d heads (the tensors win)",
            published,
            stated,
            path,
            config.num_heads,
        )
    info = {
        "source": str(path),
        "format": config.format,
        "num_heads": config.num_heads,
        "num_blocks": config.num_blocks,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "dtype": str(next(iter(state.values())).dtype).removeprefix("torch."),
        "config_json_num_heads": stated,
    }
    run_info = RunInfo("import_medusa", info).as_dict()
    write_heads(config, state, out_dir, {"run_info.json": run_info})
    log.info(
        "imported %d %s heads (%d block(s) each) from %s into %s",
        config.num_heads,
        config.format,
        config.num_blocks,
        path,
        out_dir,
    )
    return info


def main(argv: list[str] | None = None) -> int:
    """`spadec import-medusa SRC --out DIR [--target DIR | --vocab-size N]`; exit 2 with
    one line on bad input."""
    from spadec.logs import setup_logging

    parser = argparse.ArgumentParser(
        prog="spadec import-medusa",
        description="Import published Medusa heads (medusa_lm_head.pt / .safetensors).",
    )
    parser.add_argument("src", help="medusa_lm_head.{pt,safetensors}, or a folder holding one")
    parser.add_argument("--out", required=True, help="our heads directory to write")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument(
        "--target", help="the target model directory (vocabulary of Medusa-2-format heads)"
    )
    vocab.add_argument("--vocab-size", type=positive_int, help="the target's vocabulary size")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        info = import_medusa(args.src, args.out, target=args.target, vocab_size=args.vocab_size)
    except ArtefactError as err:
        print(f"spadec import-medusa: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
