# shellcheck shell=bash
# A throw-away single-node Slurm cluster on this machine (sourced by slurm_test.sh):
# munged, slurmctld and slurmd started directly as root (no systemd), all state,
# sockets, logs and the configuration under $SLT (nothing written to /etc).

SLT=${FEDHEX_SLURM_TEST_DIR:-/tmp/fedhex-slurm-test}
SLT_CTLD_PORT=${FEDHEX_SLURM_CTLD_PORT:-16817}
SLT_SLURMD_PORT=${FEDHEX_SLURM_SLURMD_PORT:-16818}
export SLURM_CONF=$SLT/etc/slurm.conf

cluster_install() {
  local need=()
  for p in slurmctld slurmd slurm-client munge slurm-wlm-basic-plugins; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  ((${#need[@]} == 0)) && return 0
  echo "installing Debian packages: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
}

# Stops the daemons started from $SLT (by their pid files) and removes $SLT.
cluster_down() {
  local f pid
  # Jobs first, so that slurmd ends their steps (and fedhex-worker processes).
  if [ -f "$SLURM_CONF" ] && [ -n "$(cat "$SLT/run/slurmctld.pid" 2>/dev/null)" ] &&
    kill -0 "$(cat "$SLT/run/slurmctld.pid")" 2>/dev/null; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null
      for _ in $(seq 90); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  for f in slurmd slurmctld munged; do
    pid=$(cat "$SLT/run/$f.pid" 2>/dev/null) || continue
    { [ -n "$pid" ] && kill "$pid" 2>/dev/null; } || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # job processes that outlived slurmd (by the pids slurmstepd recorded is not
  # possible without slurmd; the step pids we launched die with their slurmstepd)
  [ "${KEEP:-0}" = 1 ] || rm -rf "$SLT"
}

cluster_up() {
  cluster_down
  rm -rf "$SLT"
  mkdir -p "$SLT"/{etc,run,log,state,spool,munge}
  chmod 0700 "$SLT/munge"
  dd if=/dev/urandom of="$SLT/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$SLT/munge/munge.key"
  munged --force --key-file="$SLT/munge/munge.key" --socket="$SLT/munge/munge.sock" \
    --pid-file="$SLT/run/munged.pid" --log-file="$SLT/log/munged.log" --seed-file="$SLT/munge/seed" \
    || { echo "munged did not start"; cat "$SLT/log/munged.log"; return 1; }
  local node hw
  node=$(hostname -s)
  # The machine's real CPUs and memory, as slurmd sees them.
  hw=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
  cat >"$SLURM_CONF" <<CONF
ClusterName=fedhextest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$SLT_CTLD_PORT
SlurmdPort=$SLT_SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits for its old credential to expire (default 120 s)
AuthInfo=socket=$SLT/munge/munge.sock,cred_expire=10
StateSaveLocation=$SLT/state
SlurmdSpoolDir=$SLT/spool
SlurmctldPidFile=$SLT/run/slurmctld.pid
SlurmdPidFile=$SLT/run/slurmd.pid
SlurmctldLogFile=$SLT/log/slurmctld.log
SlurmdLogFile=$SLT/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=3600
InactiveLimit=0
MessageTimeout=20
PlugStackConfig=$SLT/etc/plugstack.conf
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
  : >"$SLT/etc/plugstack.conf"
  slurmctld -f "$SLURM_CONF" -i || { echo "slurmctld did not start"; tail -20 "$SLT/log/slurmctld.log"; return 1; }
  slurmd -f "$SLURM_CONF" || { echo "slurmd did not start"; tail -20 "$SLT/log/slurmd.log"; return 1; }
  for _ in $(seq 60); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then return 0; fi
    sleep 1
  done
  echo "the node did not come up:"; sinfo -N 2>&1; tail -20 "$SLT/log/slurmctld.log" "$SLT/log/slurmd.log"
  return 1
}
