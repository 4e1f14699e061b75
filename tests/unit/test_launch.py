"""Launcher command lines, the GPU lease, and a real 2-process CPU launch."""

from __future__ import annotations

import os
import sys
import textwrap
import threading

import pytest

from spadec.gpu_lease import GpuLease, LeaseError, lease_needed
from spadec.launch import build_command, child_env, free_port
from tests.conftest import run


def test_single_process_is_plain_python():
    cmd = build_command("train.py", ["--x", "1"], nproc=1, gpus=0, python="py")
    assert cmd == ["py", "train.py", "--x", "1"]


def test_multi_process_uses_torchrun_standalone():
    cmd = build_command("train.py", ["--x"], nproc=4, gpus=4, python="py")
    assert cmd[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert cmd[5:] == ["train.py", "--x"]
    assert not any("port" in part for part in cmd)  # --standalone picks its own rendezvous


def test_deepspeed_launcher_gpu_and_cpu():
    gpu = build_command("t.py", [], nproc=2, gpus=2, backend="deepspeed", port=12345, python="py")
    assert gpu[:5] == ["py", "-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
    assert gpu[5:8] == ["--master_port", "12345", "--no_local_rank"] and gpu[-1] == "t.py"
    cpu = build_command("t.py", [], nproc=2, gpus=0, backend="deepspeed", python="py")
    assert "--num_accelerators" in cpu
    port = int(cpu[cpu.index("--master_port") + 1])
    assert 1024 <= port <= 65535


def test_bad_launch_requests_are_refused():
    with pytest.raises(ValueError, match="one process per GPU"):
        build_command("t.py", [], nproc=3, gpus=2)
    with pytest.raises(ValueError, match="exactly one"):
        build_command("t.py", [], nproc=2, gpus=0, backend="python")
    with pytest.raises(ValueError, match="unknown backend"):
        build_command("t.py", [], nproc=1, gpus=0, backend="mpi")


def test_free_ports_are_usable():
    assert free_port() != 0


def test_cpu_jobs_hide_gpus_and_leased_jobs_see_theirs():
    assert child_env(0, None, base={})["CUDA_VISIBLE_DEVICES"] == ""
    assert child_env(2, ["3", "5"], base={})["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert child_env(1, None, base={"CUDA_VISIBLE_DEVICES": "7"})["CUDA_VISIBLE_DEVICES"] == "7"


def test_cpu_ranks_share_the_cores_instead_of_each_taking_all():
    assert "OMP_NUM_THREADS" not in child_env(0, None, base={}, nproc=1)
    threads = int(child_env(0, None, base={}, nproc=2)["OMP_NUM_THREADS"])
    assert threads >= 1 and threads * 2 <= max(2, len(os.sched_getaffinity(0)))
    assert child_env(0, None, base={"OMP_NUM_THREADS": "3"}, nproc=2)["OMP_NUM_THREADS"] == "3"


def test_lease_is_skipped_under_slurm_or_explicit_devices():
    assert lease_needed({})
    assert not lease_needed({"SLURM_JOB_ID": "42"})
    assert not lease_needed({"CUDA_VISIBLE_DEVICES": "0"})


def test_leases_are_disjoint_and_released(tmp_path):
    ids = ["0", "1", "2"]
    with GpuLease(2, ids, tmp_path) as first, GpuLease(1, ids, tmp_path) as second:
        assert set(first.ids).isdisjoint(second.ids)
        with pytest.raises(LeaseError, match="no 1 free GPU"):
            GpuLease(1, ids, tmp_path, timeout_s=0.2, poll_s=0.05).acquire()
    with GpuLease(3, ids, tmp_path) as all_three:
        assert sorted(all_three.ids) == ids


def test_waiting_lease_gets_the_gpu_once_freed(tmp_path):
    holder = GpuLease(1, ["0"], tmp_path)
    holder.acquire()
    got = []
    waiter = threading.Thread(
        target=lambda: got.append(GpuLease(1, ["0"], tmp_path, timeout_s=20, poll_s=0.05).acquire())
    )
    waiter.start()
    threading.Event().wait(0.3)
    assert not got
    holder.release()
    waiter.join(timeout=20)
    assert got == [["0"]]


def test_asking_for_more_gpus_than_exist(tmp_path):
    with pytest.raises(LeaseError, match="asks for 2 GPU"):
        GpuLease(2, ["0"], tmp_path)


@pytest.mark.slow
def test_two_cpu_processes_really_run_over_gloo(tmp_path):
    script = tmp_path / "allreduce.py"
    script.write_text(
        textwrap.dedent("""
        import os, sys, torch, torch.distributed as dist
        dist.init_process_group("gloo")
        t = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(t)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
        open(sys.argv[1] + f".{dist.get_rank()}", "w").write(f"{dist.get_world_size()} {t.item()}")
        dist.destroy_process_group()
    """)
    )
    out = tmp_path / "result"
    run(
        [
            sys.executable,
            "-m",
            "spadec.launch",
            "--gpus",
            "0",
            "--nproc",
            "2",
            "--",
            str(script),
            str(out),
        ],
        check=True,
        timeout=300,
    )
    assert (tmp_path / "result.0").read_text() == "2 3.0"
    assert (tmp_path / "result.1").read_text() == "2 3.0"


def test_launch_passes_the_exit_code_through(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys; sys.exit(3)\n")
    proc = run([sys.executable, "-m", "spadec.launch", "--gpus", "0", "--", str(script)])
    assert proc.returncode == 3
