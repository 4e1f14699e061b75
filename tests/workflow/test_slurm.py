"""The cluster profile against a real one-node SLURM (scripts/slurm_cluster.sh, two fake GPUs).

Three runs start together:
- the whole micro DAG (`rule all`, tables included) through `--workflow-profile
  profiles/slurm`, with prepare_base and eval_speed asking for one GPU: every job
  submitted, run inside its allocation and finished, the GPU requests on the GPU partition;
  its outputs are compared with the session's local run of the same DAG (profiles/ci);
- a job that fails (its settings file is garbage): reported as failed;
- prepare_base (on ready-made data), its steps paced by the clock, with more of them than fit
  in its 2-minute limit: killed by SLURM, resubmitted with 8 minutes, resumed from its own
  checkpoint.
The fake GPUs have no CUDA behind them: jobs compute on the CPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from spadec.pacing import ENV_VAR as PACING_ENV_VAR
from tests.conftest import MICRO_CONFIG, REPO, run, tool

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm"
IN_CI = bool(os.environ.get("CI"))
# The profile's variables, as a site would set them (the cluster has no accounting: any
# account is accepted).
SLURM_ENV = {
    "SPADEC_SLURM_ACCOUNT": "ci",
    "SPADEC_SLURM_PARTITION": "cpu",
    "SPADEC_SLURM_GPU_PARTITION": "gpu",
}
# Walltime run: prepare_base with each step paced to last >= WALLTIME_STEP_S
# (SPADEC_MIN_STEP_SECONDS; a micro step computes in 25-80 ms on 2 cores), so how far it gets
# in a given time is bounded by the clock, not by the machine's speed. Its 480 steps need
# >= 240 s. Attempt 1 (2 minutes) is ended by SLURM 120-155 s after it starts (the limit
# check runs every 30 s, KillWait 5 s): <= 310 steps, never the end; it has checkpointed
# (every 10 s of steps) unless its start-up took over 110 s. Attempt 2 (8 minutes) has
# <= 230 s of steps left: room for a start-up of minutes, on any machine whose micro step
# computes in under 0.5 s. While it sleeps it leaves the cores to the whole-DAG run.
WALLTIME_STEP_S = 0.5
WALLTIME_STEPS = 480
WALLTIME_CKPT_EVERY = 20
WALLTIME_RUNTIME_MIN = "6 * attempt - 4"  # 2, then 8
# A guard against a hang, not a speed test. On an idle 2-core machine the three runs take
# ~6 minutes together (the walltime run >= 240 s of paced steps plus two start-ups and
# SLURM's polling, the whole DAG ~5-6 minutes beside it): the deadline leaves a machine
# several times slower room to finish.
RUN_TIMEOUT_S = 1800


def _unavailable(reason: str):
    # In CI the cluster must come up: a skip there would hide a broken setup.
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def _slurm_installed() -> bool:
    return all(
        shutil.which(name) or Path("/usr/sbin", name).exists()
        for name in ("munged", "slurmctld", "slurmd", "sbatch", "squeue")
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster; stopped at the end unless it was already running."""
    if os.geteuid() != 0:
        _unavailable("starting SLURM needs root (sudo bash scripts/slurm_cluster.sh start)")
    if not _slurm_installed():
        if IN_CI:
            proc = run(["bash", str(SCRIPT), "install"], timeout=900)
            if proc.returncode:
                pytest.fail(f"installing SLURM failed:\n{proc.stderr[-3000:]}")
        else:
            pytest.skip("SLURM is not installed (sudo bash scripts/slurm_cluster.sh install)")
    was_running = run(["bash", str(SCRIPT), "status"], timeout=60).returncode == 0
    proc = run(["bash", str(SCRIPT), "start"], timeout=180)
    if proc.returncode:
        _unavailable(f"could not start SLURM:\n{proc.stderr[-3000:]}")
    yield
    if not was_running:
        run(["bash", str(SCRIPT), "stop"], timeout=180)


def _set_resources(**overrides: dict) -> list[str]:
    """The real profile's `set-resources`, plus CI overrides: on the command line the option
    replaces the profile's whole map, so the profile's entries are repeated from its file."""
    entries = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())["set-resources"]
    entries = {rule: dict(res) for rule, res in entries.items()}
    for rule, res in overrides.items():
        entries.setdefault(rule, {}).update(res)
    env = {**os.environ, **SLURM_ENV}
    args = []
    for rule, res in entries.items():
        for key, value in res.items():
            value = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), str(value))
            args.append(f"{rule}:{key}={value}")
    return ["--set-resources", *args]


def _snakemake(workdir: Path, config: Path, *args: str, slurm: bool) -> list[str]:
    cmd = [tool("snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    cmd += ["--configfile", str(config)]
    if slurm:
        # --verbose: the plugin logs each sbatch line only then
        cmd += ["--profile", str(REPO / "profiles" / "slurm-ci")]
        cmd += ["--workflow-profile", str(SLURM_PROFILE), "--verbose"]
    else:
        cmd += ["--workflow-profile", str(REPO / "profiles" / "ci")]
    return [*cmd, *args]


class Run:
    """One snakemake run in the background (its own process group, output to a file)."""

    def __init__(self, name: str, workdir: Path, cmd: list[str], env: dict | None = None):
        self.name, self.workdir = name, workdir
        self.log_path = workdir.parent / f"{workdir.name}.out"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.returncode: int | None = None

    def wait(self, deadline: float) -> None:
        try:
            self.returncode = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # The executor can ignore SIGTERM while it polls: kill the whole group.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.returncode = self.proc.wait(timeout=60)
        self._log.close()

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        return f"{self.name} (rc {self.returncode}):\n{self.output[-6000:]}"

    def submissions(self) -> list[tuple[str, str, str]]:
        """(rule, SLURM job id, sbatch line) of every submission, in order."""
        calls = re.findall(r"^sbatch call: (sbatch .*)$", self.output, re.M)
        ids = re.findall(r"has been submitted with SLURM jobid (\d+)", self.output)
        assert len(calls) == len(ids), self.tail()
        rules = [
            re.search(r"--comment '?rule_(\w+?)(_wildcards_\S+)?'? ", c).group(1) for c in calls
        ]
        return list(zip(rules, ids, calls, strict=True))


def _squeue(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """What the controller says about finished jobs (kept MinJobAge=600 s)."""
    fields = ["JobID", "Partition", "State", "tres-per-job", "TimeLimit", "Comment"]
    out = run(
        [
            "squeue",
            "-h",
            "-t",
            "all",
            "-j",
            ",".join(job_ids),
            "-O",
            ",".join(f"{f}:60" for f in fields),
        ],
        timeout=60,
        check=True,
    ).stdout
    rows = (line.split() for line in out.splitlines() if line.strip())
    return {row[0]: dict(zip(fields, row, strict=True)) for row in rows}


def _walltime_config(path: Path) -> Path:
    text = MICRO_CONFIG.read_text()
    for old, new in (
        ("    steps: 12\n", f"    steps: {WALLTIME_STEPS}\n"),
        ("    checkpoint_every: 5\n", f"    checkpoint_every: {WALLTIME_CKPT_EVERY}\n"),
        ("    log_every: 5\n", f"    log_every: {WALLTIME_CKPT_EVERY}\n"),
    ):
        assert text.count(old) == 1, old  # the base stage's knobs
        text = text.replace(old, new)
    path.write_text(text)
    return path


def _seed_data(workdir: Path, micro_data: Path, config: dict) -> None:
    """The micro datasets (built once per session) as prepare_data's output, with its
    settings file older than them: Snakemake then has nothing to redo before prepare_base."""
    from spadec.config import resolve_stage
    from spadec.io import write_json

    data = workdir / "results" / "micro" / "data"
    shutil.copytree(micro_data, data)
    settings = workdir / "results" / "micro" / "config" / "data.json"
    write_json(settings, resolve_stage(config, "micro", "data"))
    oldest = min(p.stat().st_mtime for p in [data, *data.rglob("*")]) - 60
    os.utime(settings, (oldest, oldest))


# Rules the micro DAG submits (stage_config and tables are local rules).
SUBMITTED_RULES = {
    "prepare_data": 1,
    "prepare_base": 1,
    "finetune_dllm": 2,
    "merge_lora": 2,
    "convert_hf": 2,
    "eval_dllm": 2,
    "distill": 3,
    "eagle_data": 6,
    "train_eagle": 3,
    "train_medusa": 3,
    "predictor_data": 4,  # two predictors (EAGLE-2's trees, Medusa's), 2 shards each
    "train_predictor": 2,
    "eval_speed": 1,
}
GPU_RULES = ("prepare_base", "eval_speed")


@pytest.fixture(scope="module")
def runs(slurm_cluster, micro_data, micro_config, micro_run, tmp_path_factory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("slurm")
    one_gpu = {rule: {"gpu": 1} for rule in GPU_RULES}
    failing = root / "failing"
    (failing / "results" / "micro" / "config").mkdir(parents=True)
    # stage_config does not rerun over an existing file: prepare_data gets garbage
    (failing / "results" / "micro" / "config" / "data.json").write_text("not json\n")
    walltime = root / "walltime"
    _seed_data(walltime, micro_data, micro_config)
    started = time.monotonic()
    jobs = {
        "slurm": Run(
            "slurm",
            root / "slurm",
            _snakemake(root / "slurm", MICRO_CONFIG, *_set_resources(**one_gpu), slurm=True),
            SLURM_ENV,
        ),
        "walltime": Run(
            "walltime",
            walltime,
            _snakemake(
                walltime,
                _walltime_config(root / "walltime.yaml"),
                "--until",
                "prepare_base",
                # attempt-scaled like the rule's own 120 * attempt, in CI-sized minutes
                *_set_resources(prepare_base={"gpu": 1, "runtime": WALLTIME_RUNTIME_MIN}),
                # one core: the other one is the whole-DAG run's
                "--set-threads",
                "prepare_base=1",
                slurm=True,
            ),
            {**SLURM_ENV, PACING_ENV_VAR: str(WALLTIME_STEP_S)},
        ),
        "failing": Run(
            "failing",
            failing,
            _snakemake(failing, MICRO_CONFIG, "--until", "prepare_data", slurm=True),
            SLURM_ENV,
        ),
    }
    deadline = started + RUN_TIMEOUT_S
    for job in jobs.values():
        job.wait(deadline)
    print(f"SLURM runs took {time.monotonic() - started:.0f} s")
    jobs["local"] = micro_run
    return jobs


def test_every_job_is_submitted_runs_in_its_allocation_and_finishes(runs):
    slurm = runs["slurm"]
    assert slurm.returncode == 0, slurm.tail()
    submitted = slurm.submissions()
    jobs_of: dict[str, list[str]] = {}
    for rule, job_id, _ in submitted:
        jobs_of.setdefault(rule, []).append(job_id)
    assert {rule: len(ids) for rule, ids in jobs_of.items()} == SUBMITTED_RULES, slurm.tail()
    state = _squeue([job_id for _, job_id, _ in submitted])
    for rule, job_id, _ in submitted:
        assert state[job_id]["State"] == "COMPLETED", (rule, state[job_id])
    results = slurm.workdir / "results" / "micro"
    # each stage's own record says where it ran
    for rule, out in (
        ("prepare_data", "data"),
        ("prepare_base", "base"),
        ("train_eagle", "eagle/dllm/head"),
        ("train_predictor", "predictor/model"),
        ("eval_speed", "eval/heldout"),
    ):
        device = json.loads((results / out / "run_info.json").read_text())["device"]
        assert device["SLURM_JOB_ID"] in jobs_of[rule], (rule, device)
    calls = {rule: (job_id, call) for rule, job_id, call in submitted}
    data_id, data_call = calls["prepare_data"]
    # a CPU rule: one task on the CPU partition, no GPU
    assert " -p cpu " in data_call and "--ntasks=1" in data_call and "--gpus" not in data_call
    assert state[data_id]["Partition"] == "cpu" and state[data_id]["tres-per-job"] == "N/A"
    print(f"prepare_data: {data_call.split(' --wrap=')[0]}")
    for rule in GPU_RULES:
        job_id, call = calls[rule]
        print(f"{rule}: {call.split(' --wrap=')[0]}")
        # a GPU rule: --gpus=1 on the GPU partition, one launcher (no task per GPU)
        assert " -p gpu " in call and "--gpus=1" in call and "--ntasks" not in call, call
        assert state[job_id]["Partition"] == "gpu", state[job_id]
        assert state[job_id]["tres-per-job"] == "gres:gpu:1", state[job_id]
    # eval_speed holds its node alone
    assert "--exclusive" in calls["eval_speed"][1]
    device = json.loads((results / "base" / "run_info.json").read_text())["device"]
    # one of the two fake GPUs (the walltime run may hold the other), set by SLURM's GRES
    assert device["CUDA_VISIBLE_DEVICES"] in ("0", "1"), device
    assert json.loads((results / "base" / "metrics.json").read_text())["device"] == "cpu"
    # inside the allocation the job step is one task (`srun -n1`) holding the GPU
    base_id = calls["prepare_base"][0]
    slurm_log = slurm.workdir / ".snakemake" / "slurm_logs" / "rule_prepare_base" / "micro"
    step = re.search(
        r"The call for this job is: (srun [^/]*)", (slurm_log / f"{base_id}.log").read_text()
    )
    assert step and step.group(1).split()[:2] == ["srun", "-n1"] and "--gpus=1" in step.group(1)


# Keys that measure speed or time: they differ between any two runs (`timing` holds the
# per-step timings of a speculative method, `time_share_*` their table columns).
_TIMING = re.compile(r"per_s(_|$)|wall|_at$|speedup|^timing$|^time_share_")


# Sets that peft writes as lists, in an order that varies from process to process.
_SET_VALUED = {"target_modules", "modules_to_save"}


def _same_json(slurm, local, where: str) -> None:
    if isinstance(local, dict):
        assert set(slurm) == set(local), where
        for key in local:
            if key == "run_info":  # provenance (host, job id, time): the settings agree
                assert slurm[key]["config_hash"] == local[key]["config_hash"], where
            elif key in _SET_VALUED and isinstance(local[key], list):
                assert sorted(slurm[key]) == sorted(local[key]), f"{where}.{key}"
            elif not _TIMING.search(key):
                _same_json(slurm[key], local[key], f"{where}.{key}")
    elif isinstance(local, list):
        assert len(slurm) == len(local), where
        for i, (a, b) in enumerate(zip(slurm, local, strict=True)):
            _same_json(a, b, f"{where}[{i}]")
    elif isinstance(local, float):
        # the same computation on the same CPU, 2 threads each: equal, but allow noise
        assert slurm == pytest.approx(local, rel=1e-4, abs=1e-6), where
    else:
        assert slurm == local, where


def _same_table(a: Path, b: Path) -> None:
    """Equal tables, except the columns that time something (within noise: positive)."""
    import pandas as pd

    ta, tb = pd.read_csv(a), pd.read_csv(b)
    assert list(ta.columns) == list(tb.columns), a.name
    timed = [c for c in tb.columns if _TIMING.search(c)]
    pd.testing.assert_frame_equal(ta.drop(columns=timed), tb.drop(columns=timed), rtol=1e-4)
    assert (ta[timed].fillna(0) >= 0).all().all()
    if "speedup" in ta:
        assert (ta["speedup"] > 0).all()


def test_slurm_outputs_match_a_local_run(runs):
    import torch
    from safetensors.torch import load_file

    slurm, local = runs["slurm"], runs["local"]
    assert slurm.returncode == 0, slurm.tail()
    a, b = slurm.workdir / "results", local / "results"
    files = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert any(f.name == "model.safetensors" for f in files)
    assert Path("tables/speedup.csv") in files
    for rel in files:
        if rel.name == "run_info.json":  # host, job id, time: only the settings must agree
            assert (
                json.loads((a / rel).read_text())["config_hash"]
                == json.loads((b / rel).read_text())["config_hash"]
            )
        elif rel.suffix == ".json":
            _same_json(
                json.loads((a / rel).read_text()), json.loads((b / rel).read_text()), str(rel)
            )
        elif rel.suffix == ".jsonl":
            rows_a, rows_b = ((p / rel).read_text().splitlines() for p in (a, b))
            _same_json([json.loads(r) for r in rows_a], [json.loads(r) for r in rows_b], str(rel))
        elif rel.suffix == ".safetensors":
            sa, sb = load_file(a / rel), load_file(b / rel)
            assert sa.keys() == sb.keys()
            for key in sb:
                torch.testing.assert_close(
                    sa[key],
                    sb[key],
                    rtol=1e-5,
                    atol=1e-6,
                    msg=lambda m, k=f"{rel}:{key}": f"{k}: {m}",
                )
        elif rel.suffix == ".csv":
            _same_table(a / rel, b / rel)
        elif rel.suffix in (".png", ".md", ".tex") and rel.parts[0] in ("tables", "figures"):
            # timings are printed in them: their numbers are checked through the CSVs
            assert (a / rel).stat().st_size > 0, rel
        elif rel.suffix == ".png":  # drawn from a metrics.json compared above
            assert (a / rel).read_bytes()[:4] == b"\x89PNG", rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_a_failing_job_is_reported_as_failed(runs):
    failing = runs["failing"]
    assert failing.returncode not in (0, None), failing.tail()
    submitted = failing.submissions()
    # the profile's `retries: 1` tries it twice; both attempts fail and are reported
    assert [rule for rule, _, _ in submitted] == ["prepare_data"] * 2, failing.tail()
    assert "Error in rule prepare_data" in failing.output, failing.tail()
    state = _squeue([job_id for _, job_id, _ in submitted])
    for _, job_id, _ in submitted:
        assert f"SLURM-job '{job_id}' failed, SLURM status is: 'FAILED'" in failing.output
        assert state[job_id]["State"] == "FAILED", state


def test_a_job_killed_at_its_time_limit_resumes_from_its_checkpoint(runs):
    walltime = runs["walltime"]
    assert walltime.returncode == 0, walltime.tail()
    submitted = walltime.submissions()
    assert [rule for rule, _, _ in submitted] == ["prepare_base"] * 2, walltime.tail()
    attempts = [(job_id, call) for _, job_id, call in submitted]
    (first, first_call), (second, second_call) = attempts
    # --retries from the profile, runtime scaled by the attempt
    assert " -t 2 " in first_call and "--attempt 1 " in first_call
    assert " -t 8 " in second_call and "--attempt 2 " in second_call
    state = _squeue([first, second])
    assert state[first]["State"] == "TIMEOUT" and state[second]["State"] == "COMPLETED", state
    assert f"SLURM-job '{first}' failed, SLURM status is: 'TIMEOUT'" in walltime.output
    slurm_log = next((walltime.workdir / ".snakemake" / "slurm_logs").rglob(f"{first}.log"))
    assert "DUE TO TIME LIMIT" in slurm_log.read_text()
    base = walltime.workdir / "results" / "micro" / "base"
    metrics = json.loads((base / "metrics.json").read_text())
    # the second attempt went on from the first one's last checkpoint, not from step 0
    resumed = metrics["resumed_from_step"]
    print(f"attempt 2 resumed at step {resumed}/{WALLTIME_STEPS}")
    assert 0 < resumed < WALLTIME_STEPS and resumed % WALLTIME_CKPT_EVERY == 0
    assert metrics["steps"] == WALLTIME_STEPS
    assert metrics["loss_history"][-1]["step"] == WALLTIME_STEPS
    # the history before the resume came from the checkpoint: one record per log step
    steps = [h["step"] for h in metrics["loss_history"]]
    assert steps == list(range(WALLTIME_CKPT_EVERY, WALLTIME_STEPS + 1, WALLTIME_CKPT_EVERY))
    log = (walltime.workdir / "logs" / "micro" / "prepare_base.log").read_text()
    assert f"(step {resumed})" in log and "resuming from" in log


class _Resources(dict):
    """A job's resources as the plugin reads them (`.get` and attributes)."""

    __getattr__ = dict.__getitem__


def _dry_run_jobs(stdout: str) -> list[dict]:
    jobs = []
    for block in re.findall(r"^rule (\w+):\n(.*?)^Shell command: (.*?)$", stdout, re.M | re.S):
        rule, body, shell = block
        resources = re.search(r"^\s+resources: (.*)$", body, re.M).group(1)
        res = _Resources()
        for item in resources.split(", "):
            key, _, value = item.partition("=")
            res[key] = int(value) if value.isdigit() else value
        threads = re.search(r"^\s+threads: (\d+)$", body, re.M)
        jobs.append(
            {
                "rule": rule,
                "resources": res,
                "threads": int(threads.group(1)) if threads else 1,
                "shell": shell,
            }
        )
    return jobs


@pytest.mark.parametrize(
    "config", sorted((REPO / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.stem
)
def test_paper_multi_gpu_rules_get_all_gpus_for_one_launcher(config, tmp_path):
    """The sbatch line the plugin builds for each multi-GPU job of a paper config: `--gpus=N`
    on the GPU partition and no task per GPU; the job runs one launcher for N processes."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    proc = run(
        [
            tool("snakemake"),
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path),
            "-n",
            "--workflow-profile",
            str(SLURM_PROFILE),
            "--configfile",
            str(config),
        ],
        env=SLURM_ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    multi = [j for j in _dry_run_jobs(proc.stdout) if j["resources"].get("gpu", 0) > 1]
    assert {j["rule"] for j in multi} == {"train_eagle", "train_medusa"}, [j["rule"] for j in multi]
    for job in multi:
        res, n = job["resources"], job["resources"]["gpu"]
        fake = SimpleNamespace(resources=res, threads=job["threads"], name=job["rule"])
        params = {
            "run_uuid": "RUN",
            "slurm_logfile": "LOG",
            "comment_str": f"rule_{job['rule']}",
            "account": f"-A {res['slurm_account']}",
            "partition": f"-p {res['slurm_partition']}",
            "workdir": str(tmp_path),
        }
        sbatch = get_submit_command(fake, params) + set_gres_string(fake)
        assert f"--gpus={n}" in sbatch and " -p gpu " in sbatch, sbatch
        assert "--ntasks" not in sbatch, sbatch  # never one SLURM task per GPU
        # one launcher that spawns the N ranks itself (DeepSpeed here)
        assert job["shell"].count("spadec.launch") == 1, job["shell"]
        assert f"spadec.launch --gpus {n} --backend deepspeed" in job["shell"], job["shell"]
        assert not re.search(r"\b(srun|mpirun)\b", job["shell"]), job["shell"]
