"""A file-lock GPU lease for multi-GPU workstations without a scheduler.

Snakemake's `gpu` resource only limits how many GPUs are in use at once; it never says
which. Each job takes `n` per-GPU locks (flock: released by the kernel even if the job
is killed) and exports `CUDA_VISIBLE_DEVICES` for them. Under SLURM the allocation
already did this, so the lease steps aside.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout


class LeaseError(RuntimeError):
    pass


def default_lock_dir() -> Path:
    return Path(
        os.environ.get("SPADEC_GPU_LEASE_DIR")
        or Path(tempfile.gettempdir()) / f"spadec-gpu-lease-{os.getuid()}"
    )


def visible_gpu_ids() -> list[str]:
    """GPU ids this process may use: SPADEC_GPU_IDS, else what nvidia-smi lists."""
    if os.environ.get("SPADEC_GPU_IDS"):
        return [g.strip() for g in os.environ["SPADEC_GPU_IDS"].split(",") if g.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def lease_needed(env: dict | None = None) -> bool:
    """False under a scheduler or when the user already chose the devices."""
    env = os.environ if env is None else env
    return not (env.get("SLURM_JOB_ID") or env.get("CUDA_VISIBLE_DEVICES") is not None)


class GpuLease:
    """Hold `n` GPUs until released (use as a context manager)."""

    def __init__(
        self,
        n: int,
        gpu_ids: list[str] | None = None,
        lock_dir: Path | None = None,
        timeout_s: float | None = None,
        poll_s: float = 5.0,
    ):
        self.n = n
        self.gpu_ids = gpu_ids if gpu_ids is not None else visible_gpu_ids()
        self.lock_dir = Path(lock_dir or default_lock_dir())
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.held: list[tuple[str, FileLock]] = []
        if n > len(self.gpu_ids):
            raise LeaseError(f"job asks for {n} GPU(s) but this machine shows {len(self.gpu_ids)}")

    def _try_once(self) -> bool:
        for gid in self.gpu_ids:
            if len(self.held) == self.n:
                break
            lock = FileLock(self.lock_dir / f"gpu{gid}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            self.held.append((gid, lock))
        if len(self.held) == self.n:
            return True
        self.release()
        return False

    def acquire(self) -> list[str]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        while not self._try_once():
            if self.timeout_s is not None and time.monotonic() - start > self.timeout_s:
                raise LeaseError(
                    f"no {self.n} free GPU(s) among {self.gpu_ids} "
                    f"after {self.timeout_s:.0f} s (locks in {self.lock_dir})"
                )
            time.sleep(self.poll_s)
        return self.ids

    @property
    def ids(self) -> list[str]:
        return [gid for gid, _ in self.held]

    def release(self) -> None:
        for _, lock in self.held:
            lock.release()
        self.held = []

    def __enter__(self) -> GpuLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
