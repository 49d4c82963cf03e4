#!/usr/bin/env bash
# A real one-host SLURM cluster for tests and CI: slurmctld + two slurmd (emulated nodes n1, n2) + munge.
#
#   sudo bash tools/slurm_test_cluster.sh up      # installs Debian's slurm-wlm pieces if missing (~40 s)
#   bash tools/slurm_test_cluster.sh status
#   sudo bash tools/slurm_test_cluster.sh down    # stops every daemon it started, removes its state
#
# Both nodes run on this host (NodeHostname=localhost, their own slurmd ports); n1/n2 are mapped to
# 127.0.0.1 in /etc/hosts so node names resolve. State and logs live in $SLURM_TEST_DIR
# (default /tmp/vidgpt-slurm). Needs root (daemons, /etc/slurm, /etc/munge).
set -euo pipefail

DIR="${SLURM_TEST_DIR:-/tmp/vidgpt-slurm}"
CONF=/etc/slurm/slurm.conf
CPUS="${SLURM_TEST_CPUS:-2}"

log() { echo "slurm_test_cluster: $*" >&2; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  log "installing slurmctld slurmd slurm-client munge (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  mkdir -p /etc/slurm "$DIR/ctld" "$DIR/n1" "$DIR/n2"
  cat >"$CONF" <<EOF
ClusterName=vidgpt-test
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=30
SlurmdParameters=config_overrides
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  grep -qE '^127\.0\.0\.1[[:space:]].*\bn1\b' /etc/hosts || echo "127.0.0.1 n1 n2" >>/etc/hosts
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  mkdir -p /etc/munge /var/log/munge /var/lib/munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  runuser -u munge -- munged
}

up() {
  install
  down_quiet
  write_conf
  start_munge
  slurmctld -i
  slurmd -N n1
  slurmd -N n2
  for _ in $(seq 1 60); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qE '^idle'; then
      if [ "$(sinfo -h -N -o '%t' | grep -c idle)" -ge 2 ]; then
        log "up: $(sinfo -h -N -o '%N %t' | tr '\n' ' ')"
        return 0
      fi
    fi
    sleep 1
  done
  log "nodes did not become idle; logs in $DIR"
  sinfo -N || true
  tail -n 20 "$DIR"/*.log >&2 || true
  return 1
}

down_quiet() {
  scancel --quiet --full --signal=KILL -u root 2>/dev/null || true
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 1 20); do
    pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
    sleep 0.5
  done
  pkill -9 -x slurmd 2>/dev/null || true
  pkill -9 -x slurmctld 2>/dev/null || true
  pkill -9 -x slurmstepd 2>/dev/null || true
}

down() {
  down_quiet
  pkill -x munged 2>/dev/null || true
  rm -rf "$DIR"
  log "down"
}

status() {
  if scontrol ping 2>/dev/null | grep -q UP; then
    sinfo -N
  else
    echo "no slurm test cluster running"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
