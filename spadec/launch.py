"""Start a stage script as 1 process, N torchrun processes or N DeepSpeed processes.

    python -m spadec.launch --gpus 2 [--nproc N] [--backend auto|python|torchrun|deepspeed] \
        -- workflow_scripts/train.py --args ...

One launcher per job spawns all local ranks (never one scheduler task per GPU). With
`--gpus 0` the job runs on the CPU (several processes talk over gloo) and GPUs are
hidden from it. Ports are picked free at launch; device ids come from the scheduler or
from a GPU lease, never from code.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from spadec.gpu_lease import GpuLease, lease_needed

BACKENDS = ("auto", "python", "torchrun", "deepspeed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_command(
    script: str,
    script_args: Sequence[str],
    *,
    nproc: int,
    gpus: int,
    backend: str = "auto",
    port: int | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The command line that starts `script` with `nproc` processes."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}' (one of {', '.join(BACKENDS)})")
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if gpus > 0 and nproc > gpus:
        raise ValueError(f"{nproc} processes on {gpus} GPU(s): use one process per GPU")
    if backend == "auto":
        backend = "python" if nproc == 1 else "torchrun"
    if backend == "python":
        if nproc != 1:
            raise ValueError("backend 'python' runs exactly one process")
        return [python, script, *script_args]
    if backend == "torchrun":
        return [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            script,
            *script_args,
        ]
    # DeepSpeed's launcher: one process per accelerator; on the CPU it counts "accelerators"
    # as processes. The scripts read LOCAL_RANK from the environment (--no_local_rank).
    count_flag = "--num_gpus" if gpus > 0 else "--num_accelerators"
    return [
        python,
        "-m",
        "deepspeed.launcher.runner",
        count_flag,
        str(nproc),
        "--master_port",
        str(port or free_port()),
        "--no_local_rank",
        script,
        *script_args,
    ]


def child_env(
    gpus: int, leased: list[str] | None, base: dict | None = None, nproc: int = 1
) -> dict:
    env = dict(os.environ if base is None else base)
    if gpus == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job must not grab a GPU another job holds
        env.setdefault("DS_ACCELERATOR", "cpu")
        if nproc > 1:
            # N ranks each using every core run ~20x slower than one thread per core
            # (measured: DeepSpeed's launcher sets no thread count on the CPU).
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    elif leased is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(leased)
    return env


def run(cmd: list[str], env: dict) -> int:
    """Run the child, passing SIGTERM/SIGINT on (a scheduler's time limit must reach the
    trainer so it can checkpoint)."""
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spadec.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gpus", type=int, default=0, help="GPUs for this job (0 = CPU)")
    parser.add_argument(
        "--nproc", type=int, default=None, help="processes (default: one per GPU, or 1 on the CPU)"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument(
        "--lease-timeout",
        type=float,
        default=None,
        help="seconds to wait for free GPUs (default: forever)",
    )
    parser.add_argument("script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    script_args = args.script_args[1:] if args.script_args[:1] == ["--"] else args.script_args
    nproc = args.nproc or max(args.gpus, 1)
    cmd = build_command(args.script, script_args, nproc=nproc, gpus=args.gpus, backend=args.backend)
    if args.gpus > 0 and lease_needed():
        with GpuLease(args.gpus, timeout_s=args.lease_timeout) as lease:
            print(
                f"spadec.launch: leased GPU(s) {','.join(lease.ids)}", file=sys.stderr, flush=True
            )
            return run(cmd, child_env(args.gpus, lease.ids, nproc=nproc))
    return run(cmd, child_env(args.gpus, None, nproc=nproc))


if __name__ == "__main__":
    sys.exit(main())
