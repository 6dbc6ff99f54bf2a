#!/usr/bin/env bash
# A real Slurm cluster on this machine: munged, slurmctld and two slurmd daemons emulating
# the nodes n1 and n2 (same host, NodeAddr 127.0.0.1, one port each). No systemd, no root
# config files touched: everything (config, keys, sockets, state, logs, PIDs) lives in BASE_DIR.
#
#   slurm/local-cluster.sh start BASE_DIR    install (apt, root) if needed, write slurm.conf, start, wait idle
#   slurm/local-cluster.sh stop  BASE_DIR    cancel jobs, stop the daemons by their saved PIDs
#   slurm/local-cluster.sh env   BASE_DIR    print `export SLURM_CONF=...` for sbatch/squeue/scontrol
#   slurm/local-cluster.sh install           apt-get install slurmctld slurmd slurm-client munge
#
# Then:  eval "$(slurm/local-cluster.sh env /tmp/slurm)"; sbatch --nodes=2 slurm/train.sbatch
#
# Settings that make tests fast (see docs/cluster.md): cred_expire=5 and sched_interval=2 let a
# requeued job start again in ~8 s instead of ~135 s. Use a fresh BASE_DIR per cluster: a reused
# state dir brings old jobs back.
set -euo pipefail

# The daemons and mungekey live in /usr/sbin (or /sbin), which a non-login shell, a container or
# a CI runner often leaves off PATH ("mungekey: command not found"): search there too, after
# the caller's own PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

NODES=(n1 n2)
CPUS_PER_NODE="${LOCAL_SLURM_CPUS:-$(nproc)}"
MEM_PER_NODE="${LOCAL_SLURM_MEM_MB:-1000}"

die() { echo "local-cluster: $*" >&2; exit 1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
     && command -v mungekey >/dev/null && command -v sbatch >/dev/null; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "slurm is not installed and installing it needs root"
  command -v apt-get >/dev/null || die "slurm is not installed and apt-get is not available"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

free_ports() {  # N free TCP ports on the loopback interface
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

write_conf() {
  local base="$1" host ports ctld_port
  host="$(hostname -s)"
  read -r -a ports <<<"$(free_ports $((1 + ${#NODES[@]})))"
  ctld_port="${ports[0]}"
  cat >"$base/slurm.conf" <<EOF
# written by slurm/local-cluster.sh: ${#NODES[@]} emulated nodes on $(hostname -s)
ClusterName=lamolocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$base/munge/munge.sock,cred_expire=5
StateSaveLocation=$base/state
SlurmdSpoolDir=$base/spool/%n
SlurmctldPidFile=$base/run/slurmctld.pid
SlurmdPidFile=$base/run/slurmd-%n.pid
SlurmctldLogFile=$base/log/slurmctld.log
SlurmdLogFile=$base/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=2,bf_interval=2
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=10
InactiveLimit=0
Waittime=0
SlurmdTimeout=120
# nodes report the configured CPUs/memory (emulated nodes may claim more than the host has)
SlurmdParameters=config_overrides
EOF
  local i=1
  for node in "${NODES[@]}"; do
    echo "NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 Port=${ports[$i]} CPUs=$CPUS_PER_NODE RealMemory=$MEM_PER_NODE State=UNKNOWN" >>"$base/slurm.conf"
    i=$((i + 1))
  done
  local list
  list="$(IFS=,; echo "${NODES[*]}")"
  echo "PartitionName=debug Nodes=$list Default=YES MaxTime=INFINITE State=UP" >>"$base/slurm.conf"
}

start() {
  local base="$1"
  install_packages
  [ ! -e "$base/run/slurmctld.pid" ] || die "$base already holds a cluster (stop it first, or use a fresh dir)"
  mkdir -p "$base"/{munge,state,run,log,spool}
  base="$(cd "$base" && pwd)"
  [ ${#base} -lt 90 ] || die "BASE_DIR too long for the munge socket path (<100 chars): $base"
  chmod 755 "$base" "$base/munge"   # munged refuses a socket dir that is not 755
  for node in "${NODES[@]}"; do mkdir -p "$base/spool/$node"; done
  mungekey --create --force --keyfile="$base/munge/munge.key"
  chmod 600 "$base/munge/munge.key"
  munged --force --socket="$base/munge/munge.sock" --key-file="$base/munge/munge.key" \
    --log-file="$base/log/munged.log" --pid-file="$base/run/munged.pid" --seed-file="$base/munge/munged.seed"
  write_conf "$base"
  export SLURM_CONF="$base/slurm.conf"
  setsid slurmctld -D -i -f "$SLURM_CONF" >>"$base/log/slurmctld.out" 2>&1 </dev/null &
  echo $! >"$base/run/slurmctld.daemon.pid"
  for node in "${NODES[@]}"; do
    setsid slurmd -D -f "$SLURM_CONF" -N "$node" >>"$base/log/slurmd-$node.out" 2>&1 </dev/null &
    echo $! >"$base/run/slurmd-$node.daemon.pid"
  done
  local deadline=$((SECONDS + ${LOCAL_SLURM_START_TIMEOUT:-60})) states
  while :; do
    states="$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)"
    if [ "$(grep -c ' idle$' <<<"$states")" -ge "${#NODES[@]}" ]; then break; fi
    if [ $SECONDS -ge $deadline ]; then
      echo "$states" >&2; tail -n 20 "$base"/log/*.log >&2 || true
      die "nodes did not become idle"
    fi
    sleep 0.3
  done
  echo "local Slurm cluster up: ${NODES[*]} (export SLURM_CONF=$SLURM_CONF)"
}

stop_pid() {  # stop_pid PIDFILE: TERM, wait up to 10 s, then KILL — only the process we started
  local file="$1" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop() {
  local base="$1"
  [ -f "$base/slurm.conf" ] || die "no cluster in $base"
  export SLURM_CONF="$base/slurm.conf"
  if [ -f "$base/run/slurmctld.daemon.pid" ]; then
    # Cancel jobs first so that their slurmstepd processes end with them.
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  for node in "${NODES[@]}"; do stop_pid "$base/run/slurmd-$node.daemon.pid"; done
  stop_pid "$base/run/slurmctld.daemon.pid"
  rm -f "$base/run/slurmctld.pid"
  stop_pid "$base/run/munged.pid"
  echo "local Slurm cluster in $base stopped"
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    start) [ $# -eq 2 ] || die "usage: $0 start BASE_DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop BASE_DIR"; stop "$2" ;;
    env) [ $# -eq 2 ] || die "usage: $0 env BASE_DIR"; echo "export SLURM_CONF=$(cd "$2" && pwd)/slurm.conf" ;;
    install) install_packages ;;
    *) die "usage: $0 start|stop|env BASE_DIR  |  $0 install" ;;
  esac
}

# Sourced (tests: `source slurm/local-cluster.sh` to check its setup), it only defines.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
