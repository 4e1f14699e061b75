"""An instruction/answer corpus made from text that ships with Python itself.

Sources: the reference topics of `pydoc_data.topics` and the docstrings of the standard
library's modules, classes, functions and methods. Docstrings are read from the source
files with `ast` (importing every module has side effects: some open windows, some
start servers, some print).

Every record carries a `doc_id` naming the document it came from: one module's source
file (its module, class, function and method docstrings together) or one pydoc topic. A
train / held-out split by `doc_id` therefore never puts text of one document on both
sides; a held-out module may still have siblings in training (`email.mime.base` beside a
held-out `email.mime.multipart`), as an unseen page of a known manual would.
The ~100 machine-generated codec modules (`encodings.cp1252`, ...) are left out: their
near-identical docstrings would leak across any split and swamp the corpus.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Parts of the standard library that are tests, demos or vendored third-party code.
_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "venv",
    "config-3.11-x86_64-linux-gnu",
}

_TEMPLATES = {
    "module": (
        "What does the Python module `{name}` do?",
        "Describe the `{name}` module of the standard library.",
        "What is the `{name}` module for?",
    ),
    "function": (
        "What does `{name}` do?",
        "Explain the function `{name}`.",
        "How is `{name}` used?",
    ),
    "class": (
        "Describe the class `{name}`.",
        "What is `{name}` in Python?",
        "Explain what the `{name}` class represents.",
    ),
    "method": (
        "What does the method `{name}` do?",
        "Explain `{name}`.",
    ),
    "topic": (
        "Explain the Python language topic '{name}'.",
        "Summarise the Python reference section on '{name}'.",
        "What does the Python reference say about '{name}'?",
    ),
}


def _pick(options: tuple[str, ...], key: str) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    return options[digest[0] % len(options)]


def _truncate(text: str, max_chars: int) -> str:
    """Cut at the last paragraph or sentence end before `max_chars`."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    for sep in ("\n\n", ". ", ".\n"):
        cut = head.rfind(sep)
        if cut > max_chars // 3:
            return head[: cut + (1 if sep != "\n\n" else 0)].strip()
    return head.rsplit(" ", 1)[0].strip()


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    try:
        return f"({ast.unparse(node.args)})"
    except (ValueError, AttributeError):
        return "(...)"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_files(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith("test_") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or any(p.startswith("_") for p in parts) or "-" in "".join(parts):
            continue
        if parts[0] == "encodings" and len(parts) > 1:
            continue
        yield ".".join(parts), path


def _records_from_module(modname: str, path: Path, max_chars: int) -> Iterator[dict]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    doc = ast.get_docstring(tree)
    if doc:
        yield {
            "kind": "module",
            "name": modname,
            "response": f"The `{modname}` module: " + _truncate(inspect.cleandoc(doc), max_chars),
        }
    for node in tree.body:
        if _is_public_function(node):
            yield from _callable_record("function", f"{modname}.{node.name}", node, max_chars)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            qual = f"{modname}.{node.name}"
            cdoc = ast.get_docstring(node)
            if cdoc:
                yield {
                    "kind": "class",
                    "name": qual,
                    "response": f"`{qual}` is a class. "
                    + _truncate(inspect.cleandoc(cdoc), max_chars),
                }
            for sub in node.body:
                if _is_public_function(sub):
                    yield from _callable_record("method", f"{qual}.{sub.name}", sub, max_chars)


def _is_public_function(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith(
        "_"
    )


def _callable_record(kind: str, qual: str, node, max_chars: int) -> Iterator[dict]:
    doc = ast.get_docstring(node)
    if doc:
        text = _truncate(inspect.cleandoc(doc), max_chars)
        yield {"kind": kind, "name": qual, "response": f"`{qual}{_signature(node)}`: {text}"}


def iter_stdlib_records(max_response_chars: int = 600, root: Path | None = None) -> Iterator[dict]:
    """Yield instruction/answer records from the standard library, in a stable order.

    Each record: id, doc_id, kind, instruction, response.
    """
    from pydoc_data.topics import topics

    for title in sorted(topics):
        text = topics[title]
        name = title.replace("-", " ")
        yield {
            "id": f"topic:{title}",
            "doc_id": f"topic:{title}",
            "kind": "topic",
            "instruction": _pick(_TEMPLATES["topic"], title).format(name=name),
            "response": _truncate(text, max_response_chars),
        }
    for modname, path in _module_files(root or stdlib_root()):
        for rec in _records_from_module(modname, path, max_response_chars):
            yield {
                "id": f"{rec['kind']}:{rec['name']}",
                "doc_id": f"module:{modname}",
                "kind": rec["kind"],
                "instruction": _pick(_TEMPLATES[rec["kind"]], rec["name"]).format(name=rec["name"]),
                "response": rec["response"],
            }


def iter_stdlib_documents(max_chars: int = 20000, root: Path | None = None) -> Iterator[dict]:
    """Yield plain-text documents (for pre-training): pydoc topics and per-module docstrings."""
    from pydoc_data.topics import topics

    for title in sorted(topics):
        yield {"doc_id": f"topic:{title}", "text": topics[title][:max_chars]}
    for modname, path in _module_files(root or stdlib_root()):
        parts = [r["response"] for r in _records_from_module(modname, path, max_chars)]
        if parts:
            yield {
                "doc_id": f"module:{modname}",
                "text": "\n\n".join(parts)[:max_chars],
            }
