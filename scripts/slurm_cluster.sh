#!/usr/bin/env bash
# A throw-away one-node SLURM cluster on this machine, to try profiles/slurm on a laptop and
# to test it in CI: munged, slurmctld and slurmd as plain background daemons (no systemd),
# partitions `cpu` (default) and `gpu` on the same node, two fake GPUs (GRES backed by
# /dev/null and /dev/zero: `--gpus=N` is accepted and sets CUDA_VISIBLE_DEVICES, but there is
# no CUDA behind it, so jobs compute on the CPU). No accounting daemon: use the plugin's
# `squeue` status command (profiles/slurm-ci does), which MinJobAge=600 keeps reliable.
#
#   sudo bash scripts/slurm_cluster.sh install   # Debian/Ubuntu packages slurm-wlm + munge
#   sudo bash scripts/slurm_cluster.sh start     # idempotent; prints sinfo
#   sudo bash scripts/slurm_cluster.sh status    # exit 0 when the node answers and is usable
#   sudo bash scripts/slurm_cluster.sh stop      # by PID file; removes what start put in /etc
#
# Needs root (slurmd starts jobs as their user). Jobs run as the user who submits them.
# Everything (config, state, logs, PID files, munge key and socket) lives in $SPADEC_SLURM_DIR
# (default /tmp/spadec-slurm); ports are picked free at start; the node is called
# `$SPADEC_SLURM_NODE` (default spadec-node) on 127.0.0.1 whatever this machine's hostname.
# Only /etc/slurm/slurm.conf and gres.conf are links into that folder: the job step's `srun`
# finds its config only there (the executor plugin strips SLURM_CONF from the job's
# environment). A slurm.conf that this script did not write is never touched.
#
# Sizes advertised: $SPADEC_SLURM_CPUS (default 16) and $SPADEC_SLURM_MEM_MB (default 262144)
# whatever the machine has (`config_overrides`), so that the real profile's requests
# (threads: 8, mem_mb: 64000) are accepted as a real site would accept them. Nothing enforces
# them: cap threads on a small machine (profiles/slurm-ci sets max-threads).
set -euo pipefail

dir=${SPADEC_SLURM_DIR:-/tmp/spadec-slurm}
node=${SPADEC_SLURM_NODE:-spadec-node}
cpus=${SPADEC_SLURM_CPUS:-16}
mem_mb=${SPADEC_SLURM_MEM_MB:-262144}
wait_s=${SPADEC_SLURM_WAIT_S:-60} # bound on every wait below
etc=/etc/slurm
marker="# written by spadec scripts/slurm_cluster.sh"

log() { echo "slurm_cluster: $*" >&2; }
die() {
  log "$*"
  exit 1
}

wait_for() { # wait_for DESCRIPTION CMD...: poll CMD until it succeeds, at most $wait_s
  local what=$1 deadline=$((SECONDS + wait_s))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${wait_s}s waiting for $what (logs: $dir/log)"
    sleep 0.25
  done
}

alive() { # alive DIR/NAME.pid: daemon NAME runs under the PID in that file
  local pid name
  name=$(basename "$1" .pid)
  [[ -s $1 ]] && pid=$(<"$1") && [[ $pid =~ ^[0-9]+$ ]] || return 1
  # a PID can be reused after a crash: it must still be that daemon, and no zombie (this
  # sandbox's PID 1 reaps late)
  [[ $(ps -o comm= -p "$pid" 2>/dev/null) == "$name" && $(ps -o stat= -p "$pid") != Z* ]]
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ours() { # ours FILE: FILE is absent, or a link into $dir / a file carrying our marker
  [[ ! -e $1 && ! -L $1 ]] && return 0
  [[ -L $1 && $(readlink "$1") == "$dir/"* ]] && return 0
  [[ -f $1 ]] && head -n 1 "$1" | grep -qxF "$marker"
}

node_usable() { # the node answers and takes jobs
  sinfo -h -n "$node" -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated|completing'
}

cmd_install() {
  [[ $(id -u) == 0 ]] || die "install needs root"
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
    command -v sbatch >/dev/null && command -v munged >/dev/null; then
    log "slurm and munge already installed"
    return 0
  fi
  command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm (22.05+) and munge yourself"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  # --no-install-recommends: otherwise 43 packages (hdf5, rrd, rocm-smi...) instead of 9
  timeout 600 apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start_munge() {
  local m=$dir/munge
  if alive "$m/munged.pid"; then return 0; fi
  mkdir -p "$m"
  # -R: a reinstalled munge package may come back with another uid
  chown -R munge:munge "$m"
  # munged wants its socket folder searchable by all (clients: root, the submitting user)
  chmod 755 "$m"
  # our own key, socket and seed: a munged the machine may already run is left alone
  [[ -s $m/munge.key ]] || runuser -u munge -- mungekey --create --keyfile="$m/munge.key"
  runuser -u munge -- /usr/sbin/munged --socket="$m/munge.socket" --key-file="$m/munge.key" \
    --pid-file="$m/munged.pid" --log-file="$m/munged.log" --seed-file="$m/munged.seed"
  wait_for munged bash -c "munge -S '$m/munge.socket' -n | unmunge -S '$m/munge.socket'"
}

write_config() {
  local ctld_port slurmd_port
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  [[ $ctld_port != "$slurmd_port" ]] || slurmd_port=$(free_port)
  cat >"$dir/slurm.conf" <<EOF
$marker
# state, logs and PID files: $dir
ClusterName=spadec
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
# finished jobs stay visible to squeue for 10 min (the plugin's squeue status checks need
# >= 3x its first poll delay)
MinJobAge=600
# a job over its time limit gets SIGTERM, then SIGKILL 5 s later (default 30 s)
KillWait=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$node Default=NO MaxTime=INFINITE State=UP
EOF
  # a file-less GPU is dropped by slurmd (node then drains); character devices need no mknod
  printf '%s\nAutoDetect=off\nNodeName=%s Name=gpu File=/dev/null,/dev/zero\n' \
    "$marker" "$node" >"$dir/gres.conf"
  mkdir -p "$etc"
  for f in slurm.conf gres.conf; do ln -sfn "$dir/$f" "$etc/$f"; done
}

cmd_start() {
  [[ $(id -u) == 0 ]] || die "start needs root (slurmd runs jobs as their users)"
  for bin in munged slurmctld slurmd sbatch python3; do
    command -v "$bin" >/dev/null || [[ -x /usr/sbin/$bin ]] ||
      die "$bin not found: run '$0 install' first"
  done
  for f in "$etc/slurm.conf" "$etc/gres.conf"; do
    ours "$f" || die "$f exists and was not written by this script: not touching a real cluster"
  done
  if alive "$dir/run/slurmctld.pid" && alive "$dir/run/slurmd.pid" && node_usable; then
    log "already running ($dir)"
    return 0
  fi
  cmd_stop # half a cluster (one daemon died): start afresh
  mkdir -p "$dir"/{state,spool,log,run}
  start_munge
  write_config
  # -c: clean state (no jobs from an earlier cluster); -N: our node name, not the hostname
  /usr/sbin/slurmctld -c
  wait_for slurmctld scontrol ping
  /usr/sbin/slurmd -N "$node"
  wait_for "node $node to become idle" node_usable
  sinfo
}

cmd_status() {
  alive "$dir/run/slurmctld.pid" && alive "$dir/run/slurmd.pid" && node_usable
}

stop_pids() { # stop_pids PIDFILE...: TERM, wait (bounded), then KILL what is left
  local f pid pids=() deadline
  for f in "$@"; do
    if alive "$f"; then pids+=("$(<"$f")"); fi
    rm -f "$f"
  done
  ((${#pids[@]})) || return 0
  kill "${pids[@]}" 2>/dev/null || true
  deadline=$((SECONDS + 20))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [[ $(ps -o stat= -p "$pid") != Z* ]]; do
      if ((SECONDS >= deadline)); then
        log "pid $pid ignored SIGTERM; killing it"
        kill -9 "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.25
    done
  done
}

cancel_jobs() { # job steps (slurmstepd) outlive slurmd: end them through the controller
  local ids deadline=$((SECONDS + 30))
  alive "$dir/run/slurmctld.pid" || return 0
  ids=$(timeout 10 squeue -h -o %A 2>/dev/null) || return 0
  [[ -n $ids ]] || return 0
  # shellcheck disable=SC2086 # one id per word
  timeout 10 scancel $ids 2>/dev/null || true
  while [[ -n $(timeout 10 squeue -h -o %A 2>/dev/null) ]] && ((SECONDS < deadline)); do
    sleep 0.5
  done
}

cmd_stop() {
  cancel_jobs
  # slurmd, then the controller, then munge
  stop_pids "$dir/run/slurmd.pid"
  stop_pids "$dir/run/slurmctld.pid"
  stop_pids "$dir/munge/munged.pid"
  for f in "$etc/slurm.conf" "$etc/gres.conf"; do
    if [[ -L $f && $(readlink "$f") == "$dir/"* ]]; then rm -f "$f"; fi
  done
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
  echo "usage: $0 install|start|status|stop" >&2
  exit 2
  ;;
esac
