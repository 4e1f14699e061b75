"""Load one configured data source into normalised records, through `datasets`.

A source spec (one entry of the config's `data` section) names where records come from:

    {source: stdlib_docs}                               built in, offline
    {source: project_prompts}                           data/prompts/*.jsonl of this repository
    {source: alpaca | sharegpt | mt_bench | jsonl, path: FILE}
    {source: hub, hub_id: ORG/NAME, split: train, format: alpaca|sharegpt|mt_bench|jsonl}

Only a `hub` source reaches the network, and only because the config asked for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

from spadec.data import formats
from spadec.data.stdlib_docs import iter_stdlib_records

INSTRUCTION_FORMATS = ("alpaca", "sharegpt", "jsonl")


class DataSourceError(ValueError):
    """A data source is missing, unreadable or of the wrong shape."""


def _load_json_file(path: str | Path) -> Iterable[dict]:
    import datasets

    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"data file not found: {path}")
    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 - datasets raises many types; name the file once
        raise DataSourceError(
            f"cannot read {path} as JSON/JSONL: {type(err).__name__}: {err}"
        ) from err
    if len(ds) == 0:
        raise DataSourceError(f"data file is empty: {path}")
    return ds


def _load_hub(spec: dict) -> Iterable[dict]:
    import datasets

    hub_id = spec["hub_id"]
    try:
        return datasets.load_dataset(hub_id, spec.get("subset"), split=spec.get("split", "train"))
    except Exception as err:  # noqa: BLE001 - network, auth and format errors all end here
        raise DataSourceError(
            f"cannot load hub dataset '{hub_id}': {type(err).__name__}: {err}"
        ) from err


def _raw_records(spec: dict) -> tuple[str, Iterable[dict], str]:
    """Return (format, raw records, a name for messages)."""
    source = spec["source"]
    if source == "hub":
        return spec.get("format", "alpaca"), _load_hub(spec), f"hub:{spec['hub_id']}"
    if "path" not in spec or not spec["path"]:
        raise DataSourceError(f"data source '{source}' needs a 'path'")
    return source, _load_json_file(spec["path"]), str(spec["path"])


def load_instructions(spec: dict) -> list[dict]:
    """Instruction/response records for training and held-out splits."""
    limit = spec.get("max_records")
    if spec["source"] == "stdlib_docs":
        records = iter_stdlib_records(max_response_chars=spec.get("max_response_chars", 600))
    else:
        fmt, raw, where = _raw_records(spec)
        if fmt == "alpaca":
            records = formats.from_alpaca(raw, where)
        elif fmt == "sharegpt":
            records = formats.from_sharegpt(raw, where)
        elif fmt == "jsonl":
            records = formats.from_fields(raw, where, spec.get("fields") or {})
        else:
            raise DataSourceError(
                f"{where}: format '{fmt}' is not an instruction format "
                f"(one of {', '.join(INSTRUCTION_FORMATS)})"
            )
    out = list(itertools.islice(records, limit) if limit else records)
    if not out:
        raise DataSourceError(f"data source {spec} produced no records")
    return out


def load_eval(spec: dict, prompts_dir: Path, heldout: list[dict]) -> list[dict]:
    """Evaluation records ({id, category, turns, reference}) for one benchmark."""
    source = spec["source"]
    if source == "heldout":
        records = list(formats.eval_from_instructions(heldout, "heldout"))
    elif source == "project_prompts":
        files = sorted(Path(prompts_dir).glob("*.jsonl"))
        if not files:
            raise DataSourceError(f"no prompt files (*.jsonl) in {prompts_dir}")
        records = [r for f in files for r in formats.eval_from_mt_bench(_load_json_file(f), str(f))]
    else:
        fmt, raw, where = _raw_records(spec)
        if fmt == "mt_bench":
            records = list(formats.eval_from_mt_bench(raw, where))
        elif fmt in INSTRUCTION_FORMATS:
            records = list(formats.eval_from_instructions(load_instructions(spec), fmt))
        else:
            raise DataSourceError(f"{where}: unknown eval format '{fmt}'")
    categories = spec.get("categories")
    if categories:
        records = [r for r in records if r["category"] in categories]
    limit = spec.get("max_prompts")
    if limit:
        records = records[:limit]
    if not records:
        raise DataSourceError(f"eval source {spec} produced no prompts")
    return records
