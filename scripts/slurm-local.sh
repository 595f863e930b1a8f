#!/usr/bin/env bash
# A one-node Slurm cluster on this host, without systemd, for the multi-process tests (`srun -n 4 ...`).
#
#   scripts/slurm-local.sh          start it (idempotent: a running cluster is left alone)
#   scripts/slurm-local.sh stop     stop the daemons it started
#
# Needs root and the Debian packages slurm-wlm and munge. Everything lives in $CAAT_SLURM_DIR
# (default /var/lib/caatnet-slurm): slurm.conf, state, spool, logs and pid files; the system's
# /etc/slurm is not touched. munged runs with the system key (/etc/munge/munge.key, created if
# missing). The node advertises at least 8 CPUs (config_overrides) so that 4 tasks fit on a small
# machine, and KillOnBadExit=1 ends a step as soon as one task fails.
#
# The last line of output is `SLURM_CONF=<path>`: export it for srun, sinfo and scontrol.
set -euo pipefail

DIR="${CAAT_SLURM_DIR:-/var/lib/caatnet-slurm}"
CONF="$DIR/slurm.conf"
HOST="$(hostname -s)"

die() { echo "slurm-local: $*" >&2; exit 1; }

if [ "${1:-start}" = "stop" ]; then
  for d in slurmd slurmctld; do
    if [ -f "$DIR/$d.pid" ]; then kill "$(cat "$DIR/$d.pid")" 2>/dev/null || true; rm -f "$DIR/$d.pid"; fi
  done
  exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root (munged, slurmctld and slurmd run as root here)"
for b in munged slurmctld slurmd srun sinfo scontrol; do
  command -v "$b" >/dev/null 2>&1 || die "$b not found: apt-get install -y slurm-wlm munge"
done

mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"

# munge: key and daemon.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key --force >/dev/null
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
fi
if ! munge -n >/dev/null 2>&1; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged" 2>/dev/null || munged --force
  else
    munged --force
  fi
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n >/dev/null 2>&1 || die "munged did not start"
fi

CPUS="$(nproc)"
[ "$CPUS" -ge 8 ] || CPUS=8
MEM_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
cat > "$CONF.new" <<CONF
# One-node cluster written by scripts/slurm-local.sh
ClusterName=caatnet
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
KillOnBadExit=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=caat Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
if [ -f "$CONF" ] && cmp -s "$CONF" "$CONF.new"; then rm -f "$CONF.new"; else mv "$CONF.new" "$CONF"; fi
export SLURM_CONF="$CONF"

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }
running slurmctld || slurmctld -f "$CONF" || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer (see $DIR/log/slurmctld.log)"
running slurmd || slurmd -f "$CONF" || die "slurmd did not start (see $DIR/log/slurmd.log)"

# Wait for the node to register; bring it back if an earlier run left it down or drained.
for _ in $(seq 100); do
  state="$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)"
  case "$state" in
    idle*|mix*|alloc*|completing*) break ;;
    down*|drain*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.1
done
case "$state" in
  idle*|mix*|alloc*|completing*) ;;
  *) die "node $HOST is '$state' (see $DIR/log/slurmd.log)" ;;
esac
echo "SLURM_CONF=$CONF"
