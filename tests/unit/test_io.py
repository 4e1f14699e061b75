"""Atomic writes: a failed or killed writer never leaves an artefact under the final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from spadec.io import atomic_dir, atomic_path, read_json, read_jsonl, write_json, write_jsonl


def test_atomic_path_publishes_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_atomic_dir_replaces_old_content_only_when_complete(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v2-partial")
        raise ValueError("failed")
    assert (target / "a.txt").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_killed_writer_leaves_no_final_file(tmp_path):
    target = tmp_path / "big.jsonl"
    code = (
        "import sys, time\n"
        "from spadec.io import write_jsonl\n"
        "def slow():\n"
        "    for i in range(10**6):\n"
        "        if i == 10: print('writing', flush=True)\n"
        "        time.sleep(0.01)\n"
        "        yield {'i': i}\n"
        f"write_jsonl({str(target)!r}, slow())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.1)
    assert not target.exists()


def test_json_and_jsonl_round_trip(tmp_path):
    records = [{"a": 1, "text": "ünïcode ✓"}, {"a": 2, "nested": {"x": [1, 2]}}]
    assert write_jsonl(tmp_path / "r.jsonl", records) == 2
    assert read_jsonl(tmp_path / "r.jsonl") == records
    write_json(tmp_path / "m.json", {"k": 1.5})
    assert read_json(tmp_path / "m.json") == {"k": 1.5}


def test_corrupt_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ok": 1}\n{"broken": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_jsonl(path)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")
