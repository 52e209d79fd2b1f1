#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted snippets run in child shells
# The Slurm batch scripts on a real (single-node) Slurm cluster: `make slurm-test`.
#
# Brings up munged + slurmctld + slurmd from Debian's packages on this machine
# (as root, no systemd; configuration from `slurmd -C`, everything under
# $FEDHEX_SLURM_TEST_DIR, default /tmp/fedhex-slurm-test), then:
#   1. preflight: each bad set-up gives its one clear error (no GPU, too few GPUs,
#      no CUDA in libtorch, unwritable run dir, fedhex-worker missing, MPI missing),
#      and a submitted job with an unwritable run dir fails with it; the real
#      --signal=B:USR1@N timer reaches a trap in the batch shell;
#   2. a reference run: plain `mpirun -n 2 fedhex-worker` on a small phi-omega grid;
#   3. the same run as `sbatch slurm/train-cpu.sbatch` with 2 tasks, interrupted twice:
#      `scontrol requeue` while it trains (Slurm's SIGTERM), and later the
#      time-limit warning to the batch shell (`scancel --batch --signal=USR1`, what
#      --signal=B:USR1@120 sends), after which the script requeues itself;
#   and checks: the job completed after 2 restarts, `fedhex-ctl status` answered
#   while it ran, both restarts resumed from a checkpoint (log + history.csv
#   continuity), epoch checkpoints at the scheduled epochs, the losses and the
#   final weights (model.safetensors, byte for byte) equal the reference run's;
#   4. generation with the trained model: `sbatch slurm/sample.sbatch` (2 tasks)
#      and `sbatch --array=0-2 slurm/sample-array.sbatch`; the part files in
#      manifest (and task) order equal one `fedhex sample`, value for value
#      (uproot), and the generation preflight refuses a missing model and an
#      array that does not start at 0.
# Tears everything down at the end (KEEP=1 keeps $FEDHEX_SLURM_TEST_DIR) and
# prints PASS/FAIL per check with timings. Needs root (apt-get, daemons).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${FEDHEX_BIN:-$ROOT/target/release}
# shellcheck source=tests/slurm/cluster.sh
source "$HERE/cluster.sh"

T0=$(date +%s)
RESULTS=()
FAILS=0
now() { echo $(($(date +%s) - T0)); }
say() { echo "[slurm-test +$(now)s] $*"; }
check() { # check NAME CONDITION-EXIT-STATUS [detail]
  local name=$1 ok=$2 detail=${3:-}
  if [ "$ok" = 0 ]; then RESULTS+=("PASS  $name${detail:+  ($detail)}"); say "PASS $name ${detail}"; else
    RESULTS+=("FAIL  $name${detail:+  ($detail)}"); FAILS=$((FAILS + 1)); say "FAIL $name ${detail}"; fi
}
summary() {
  echo
  echo "== slurm-test summary ($(now) s in all)"
  printf '  %s\n' "${RESULTS[@]}"
  if [ "$FAILS" = 0 ] && [ "${#RESULTS[@]}" -gt 0 ]; then echo "slurm-test: PASS"; else echo "slurm-test: FAIL ($FAILS failed)"; fi
}
finish() {
  local rc=$?
  if [ "$FAILS" != 0 ] || [ "$rc" != 0 ]; then
    local f
    for f in "$SLT"/log/*.log "$SLT"/job-*.out "$SLT"/job-*.err; do
      [ -f "$f" ] && { echo "---- tail $f"; tail -n 25 "$f" | sed 's/\x1b\[[0-9;]*m//g'; }
    done
  fi
  [ "$rc" = 0 ] || { RESULTS+=("FAIL  the test script itself ended with exit $rc"); FAILS=$((FAILS + 1)); }
  say "tearing down the cluster"
  scancel --full "${JOB:-0}" 2>/dev/null || true
  cluster_down
  summary
  [ "$FAILS" = 0 ] || exit 1
}

if [ "$(id -u)" -ne 0 ]; then
  echo "slurm-test: needs root (installs Debian packages, starts munged/slurmctld/slurmd)"
  exit 1
fi
for b in fedhex fedhex-worker fedhex-ctl; do
  [ -x "$BIN/$b" ] || { echo "slurm-test: $BIN/$b missing (make build, or set FEDHEX_BIN)"; exit 1; }
done
trap finish EXIT
export NO_COLOR=1

# ---------------------------------------------------------------- cluster
cluster_install || { check "install slurm/munge" 1; exit 1; }
t=$(date +%s)
cluster_up
check "cluster up (munged, slurmctld, slurmd; $(sinfo -h -N -o '%N %c CPUs %m MB' 2>/dev/null))" $? "$(($(date +%s) - t)) s"
[ "$FAILS" = 0 ] || exit 1

# ---------------------------------------------------------------- data + settings
DATA=$SLT/data/phiomega
EPOCHS=${FEDHEX_SLURM_TEST_EPOCHS:-16}
EVERY=2
"$BIN/fedhex" gen --model phi-omega --grid 4x4 -n "${FEDHEX_SLURM_TEST_EVENTS:-4000}" --seed 3 --out "$DATA" >/dev/null ||
  { check "generate phi-omega 4x4 grid" 1; exit 1; }
SETS=(--set "data.root.files=[\"$DATA/\"]" --set network.n_blocks=2 --set 'network.hidden=[32]'
  --set training.batch_size=256 --set "training.epochs=$EPOCHS" --set training.seed=7
  --set "outputs.checkpoint_every=$EVERY" --set outputs.keep_checkpoints=100 --set training.threads=1)
CONFIG=$ROOT/examples/phiomega.toml

# ---------------------------------------------------------------- 1. preflight errors
say "preflight: bad set-ups"
pf() { # pf NAME EXPECTED-MESSAGE ENV... : runs setup+preflight in a subshell with ENV
  local name=$1 want=$2
  shift 2
  local out rc
  out=$(env -u SLURM_JOB_ID SLURM_SUBMIT_DIR="$SLT" FEDHEX_HOME="$ROOT" FEDHEX_BIN="$BIN" FEDHEX_CONFIG="$CONFIG" \
    RUN_DIR="$SLT/pf-run" FEDHEX_GPUS=none "$@" \
    /bin/bash -c 'source "$FEDHEX_HOME/slurm/fedhex-slurm.sh"; fedhex_setup >/dev/null; fedhex_preflight' 2>&1 >/dev/null)
  rc=$?
  if [ "$rc" -ne 0 ] && grep -q -- "$want" <<<"$out"; then check "preflight: $name" 0 "$(head -1 <<<"$out")"; else
    check "preflight: $name" 1 "rc=$rc: $out"; fi
}
pf "no GPU where GPUs were requested" "none is visible" FEDHEX_GPUS=required CUDA_VISIBLE_DEVICES=
pf "fewer GPUs than tasks" "2 tasks on .* only 1 GPU" FEDHEX_GPUS=required CUDA_VISIBLE_DEVICES=0 SLURM_NTASKS_PER_NODE=2
pf "GPUs visible but libtorch sees none" "libtorch sees no CUDA device" FEDHEX_GPUS=required CUDA_VISIBLE_DEVICES=0,1 SLURM_NTASKS_PER_NODE=2
pf "unwritable run dir" "cannot create the run directory" RUN_DIR=/proc/fedhex-run
pf "fedhex-worker missing" "fedhex-worker not found" FEDHEX_BIN=/nonexistent/bin
# a PATH with everything of /usr/bin but OpenMPI's launchers
mkdir -p "$SLT/nompi-bin"
for f in /usr/bin/*; do case "${f##*/}" in mpirun* | mpiexec* | orterun*) ;; *) ln -sf "$f" "$SLT/nompi-bin/" ;; esac; done
pf "mpirun missing" "mpirun not found" FEDHEX_LAUNCHER=mpirun PATH="$SLT/nompi-bin:/usr/sbin:/sbin"
pf "srun MPI plugin missing" "no 'pmix5' MPI plugin" FEDHEX_SRUN_MPI=pmix5
pf "generation: model missing" "model /nonexistent/model not readable" FEDHEX_JOB=sample FEDHEX_MODEL=/nonexistent/model
pf "generation: array not 0-(N-1)" "use --array=0-(N-1)" FEDHEX_JOB=sample SAMPLE_OUT="$SLT/pf-samples" \
  SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_MAX=3 SLURM_ARRAY_TASK_COUNT=3
ok=$(env -u SLURM_JOB_ID SLURM_SUBMIT_DIR="$SLT" FEDHEX_HOME="$ROOT" FEDHEX_BIN="$BIN" FEDHEX_CONFIG="$CONFIG" \
  RUN_DIR="$SLT/pf-run" FEDHEX_GPUS=none bash -c 'source "$FEDHEX_HOME/slurm/fedhex-slurm.sh"; fedhex_setup; fedhex_preflight' 2>&1)
check "preflight: a good set-up passes" $? "$(tail -1 <<<"$ok")"

# A submitted job with a bad run directory fails with the preflight message.
jid=$(RUN_DIR=/proc/fedhex-run FEDHEX_BIN=$BIN FEDHEX_CONFIG=$CONFIG sbatch --parsable -p test -N1 -n2 --ntasks-per-node=2 -c1 --time=5 \
  -o "$SLT/job-%j.out" -e "$SLT/job-%j.err" "$ROOT/slurm/train-cpu.sbatch")
for _ in $(seq 60); do
  st=$(scontrol show job "$jid" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  case "$st" in "" | COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL) break ;; esac
  sleep 0.5
done
msg=$(grep -h "cannot create the run directory /proc/fedhex-run" "$SLT/job-$jid.err" 2>/dev/null | head -1)
[ "$st" = FAILED ] && [ -n "$msg" ]
check "preflight in a batch job: FAILED with the message" $? "state $st: $msg"

# The real time-limit warning (slurmctld's timer, not scancel) reaches a trap in
# the batch shell; it comes within ~30 s (slurmctld checks periodically), so the
# job runs while the reference trains.
SIGJOB=$(sbatch --parsable -p test -n1 --time=1 --signal=B:USR1@50 -o "$SLT/sig-%j.out" \
  --wrap 'trap "echo got USR1; kill %1; exit 0" USR1; sleep 120 & wait')

# ---------------------------------------------------------------- 2. reference run
say "reference: mpirun -n 2, $EPOCHS epochs, uninterrupted"
t=$(date +%s)
REF=$SLT/ref
mpirun --allow-run-as-root -n 2 "$BIN/fedhex-worker" train --config "$CONFIG" "${SETS[@]}" \
  --set "outputs.run_dir=\"$REF\"" --set outputs.progress=false >"$SLT/ref.log" 2>&1
check "reference run (mpirun -n 2)" $? "$(($(date +%s) - t)) s"
REF_S=$(($(date +%s) - t))

for _ in $(seq 150); do
  st=$(scontrol show job "$SIGJOB" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  case "$st" in "" | COMPLETED | FAILED | CANCELLED | TIMEOUT) break ;; esac
  sleep 0.5
done
grep -q "got USR1" "$SLT/sig-$SIGJOB.out" 2>/dev/null
check "--signal=B:USR1@50 reaches the batch shell's trap" $? "state $st"

# ---------------------------------------------------------------- 3. the batch job
RUN=$SLT/shared/runs/po
say "sbatch slurm/train-cpu.sbatch: 1 node, 2 tasks, 1 cpu each"
t=$(date +%s)
JOB=$(FEDHEX_CHECK_SHARED=1 RUN_DIR=$RUN FEDHEX_BIN=$BIN FEDHEX_CONFIG=$CONFIG sbatch --parsable -p test -N1 -n2 --ntasks-per-node=2 -c1 --time=10 \
  -o "$SLT/job-%j.out" -e "$SLT/job-%j.err" "$ROOT/slurm/train-cpu.sbatch" "${SETS[@]}")
[ -n "$JOB" ]
check "sbatch accepted the job" $? "job $JOB"
[ -n "$JOB" ] || exit 1
OUT=$SLT/job-$JOB.out
ERR=$SLT/job-$JOB.err

jobstate() { scontrol show job "$JOB" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
restarts() { scontrol show job "$JOB" 2>/dev/null | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p'; }
ctl_epoch() { # epoch and step of the running job, from the control plane ("" when it does not answer)
  "$BIN/fedhex-ctl" --run "$RUN" status --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["epoch"], d["step"], d["state"])' 2>/dev/null
}
# wait_epoch E RESTARTS: until attempt RESTARTS of the job trains in epoch >= E
wait_epoch() {
  local want=$1 attempt=$2 e
  for _ in $(seq 600); do
    if [ "$(restarts)" = "$attempt" ] && [ "$(jobstate)" = RUNNING ]; then
      e=$(ctl_epoch)
      if [ -n "$e" ]; then
        LAST_STATUS=$e
        [ "${e%% *}" -ge "$want" ] && return 0
      fi
    fi
    case "$(jobstate)" in "" | COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) return 1 ;; esac
    sleep 0.3
  done
  return 1
}

# 3a. status from outside while it runs, then `scontrol requeue` in epoch ~4
LAST_STATUS=""
wait_epoch 3 0
check "fedhex-ctl status answered while the job ran" $? "epoch/step/state: $LAST_STATUS"
"$BIN/fedhex-ctl" --run "$RUN" status >"$SLT/ctl-status.txt" 2>&1
check "fedhex-ctl status (text) from the run dir" $? "$(head -1 "$SLT/ctl-status.txt")"
ep=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint"])' "$RUN/control.json" 2>/dev/null)
[[ "$ep" == http://$(hostname):* ]]
check "control.json endpoint is reachable by host name (listen 0.0.0.0)" $? "$ep"
say "scontrol requeue $JOB (at epoch/step $(ctl_epoch))"
scontrol requeue "$JOB"
check "scontrol requeue of the running job" $?

# 3b. after the restart: the time-limit warning to the batch shell, in epoch ~10
wait_epoch $((EPOCHS * 5 / 8)) 1
check "job restarted (Restarts=1) and trains again" $? "epoch/step/state: $LAST_STATUS"
say "scancel --batch --signal=USR1 $JOB (the --signal=B:USR1 warning) at epoch/step $(ctl_epoch)"
scancel --batch --signal=USR1 "$JOB"
check "USR1 to the batch shell" $?

# 3c. the self-requeued job runs to the end
for _ in $(seq 900); do
  case "$(jobstate)" in "" | COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) break ;; esac
  sleep 0.5
done
JOB_S=$(($(date +%s) - t))
st=$(jobstate)
rs=$(restarts)
ec=$(scontrol show job "$JOB" | sed -n 's/.* ExitCode=\([0-9:]*\).*/\1/p')
[ "$st" = COMPLETED ] && [ "$rs" = 2 ] && [ "$ec" = 0:0 ]
check "job COMPLETED after 2 restarts" $? "state $st, restarts $rs, exit $ec, ${JOB_S} s"

# ---------------------------------------------------------------- checks on the run directory
clean() { sed 's/\x1b\[[0-9;]*m//g' "$@"; }
n_resume=$(clean "$ERR" | grep -c "resuming from")
check "both restarts resumed from a checkpoint (log 'resuming from')" "$([ "$n_resume" = 2 ] && echo 0 || echo 1)" \
  "$(clean "$ERR" | grep -o 'resuming from [^ ]* (epoch [0-9]*, step [0-9]*)' | sed "s|$RUN/checkpoints/||" | tr '\n' ';')"
grep -q "no checkpoint in .* yet: starting a fresh run" "$OUT"
check "first start: fresh run (no checkpoint yet)" $?
grep -q "requeueing job $JOB" "$OUT"
check "the batch script forwarded USR1 and requeued itself" $? "$(grep -c 'batch shell got SIG' "$OUT") signal(s) seen by the batch shell"

want=$(seq "$EVERY" "$EVERY" "$EPOCHS" | xargs printf 'epoch-%06d ' | sed 's/ $//')
# shellcheck disable=SC2010 # checkpoint names are plain
have=$(ls "$RUN/checkpoints" 2>/dev/null | grep -E '^epoch-[0-9]+$' | tr '\n' ' ' | sed 's/ $//')
# shellcheck disable=SC2010
mid=$(ls "$RUN/checkpoints" 2>/dev/null | grep -E -- '-step-' | tr '\n' ' ' | sed 's/ $//')
[ "$want" = "$have" ]
check "epoch checkpoints at epochs $EVERY,$((2 * EVERY)),..,$EPOCHS" $? "have: $have"
[ -n "$mid" ]
check "mid-epoch checkpoint(s) from the stop signals" $? "${mid:-none}"

cut -d, -f1-3 "$REF/history.csv" >"$SLT/ref-hist"
cut -d, -f1-3 "$RUN/history.csv" >"$SLT/run-hist" 2>/dev/null
[ "$(cut -d, -f1 "$SLT/run-hist" | tail -n +2 | tr '\n' ' ')" = "$(seq 1 "$EPOCHS" | tr '\n' ' ')" ]
check "history.csv: epochs 1..$EPOCHS, each once, in order" $?
cmp -s "$SLT/ref-hist" "$SLT/run-hist"
check "history.csv: train/val losses equal the uninterrupted run's" $? \
  "$(diff "$SLT/ref-hist" "$SLT/run-hist" | head -3 | tr '\n' ' ')"
cmp -s "$REF/model/model.safetensors" "$RUN/model/model.safetensors"
check "final weights identical to the uninterrupted mpirun run (model.safetensors bytes)" $? \
  "$(sha256sum "$RUN/model/model.safetensors" 2>/dev/null | cut -c1-16)"
"$BIN/fedhex-ctl" --run "$RUN" status >/dev/null 2>&1
rc=$?
check "fedhex-ctl status after the end says finished (exit 5)" "$([ $rc = 5 ] && echo 0 || echo 1)" "exit $rc"
say "timings: reference ${REF_S} s, batch job incl. 2 requeues ${JOB_S} s"

# ---------------------------------------------------------------- 4. generation over ranks
say "generation: slurm/sample.sbatch (2 tasks) and slurm/sample-array.sbatch (--array=0-2), against fedhex sample"
MODEL=$RUN/model
GEN=(--grid 1000:3250:3 --grid 0.5:9.5:3 -n 3000 --seed 5 --batch 1024)
"$BIN/fedhex" sample --model "$MODEL" "${GEN[@]}" --device cpu --out "$SLT/sample-ref.root" >"$SLT/sample-ref.log" 2>&1
check "generation reference: fedhex sample" $?
SOUT=$SLT/shared/samples
t=$(date +%s)
J1=$(FEDHEX_MODEL=$MODEL SAMPLE_OUT=$SOUT/one FEDHEX_BIN=$BIN sbatch --parsable -p test -N1 -n2 --ntasks-per-node=2 -c1 \
  --time=5 -o "$SLT/job-%j.out" -e "$SLT/job-%j.err" "$ROOT/slurm/sample.sbatch" "${GEN[@]}")
J2=$(FEDHEX_MODEL=$MODEL SAMPLE_OUT=$SOUT/array FEDHEX_BIN=$BIN sbatch --parsable -p test --array=0-2 -N1 -n1 --ntasks-per-node=1 -c1 \
  --time=5 -o "$SLT/job-%A_%a.out" -e "$SLT/job-%A_%a.err" "$ROOT/slurm/sample-array.sbatch" "${GEN[@]}")
[ -n "$J1" ] && [ -n "$J2" ]
check "sbatch accepted the generation jobs" $? "jobs $J1, $J2 (array)"
for _ in $(seq 600); do
  [ -z "$(squeue -h -j "$J1,$J2" -t PD,R,CG,CF,S 2>/dev/null)" ] && break
  sleep 0.5
done
GEN_S=$(($(date +%s) - t))
st1=$([ -n "$J1" ] && scontrol show job "$J1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
n2=$([ -n "$J2" ] && scontrol show job "$J2" 2>/dev/null | grep -c "JobState=COMPLETED")
[ "$st1" = COMPLETED ] && [ "$n2" = 3 ]
check "generation jobs COMPLETED (one job, 3 array tasks)" $? "job $J1 $st1, $n2 of 3 array tasks completed, ${GEN_S} s"
SAME='
import json, os, sys
import numpy as np, uproot
ref, dirs = sys.argv[1], sys.argv[2:]
paths = []
for d in dirs:
    m = json.load(open(os.path.join(d, "manifest.json")))
    paths += [os.path.join(d, f["file"]) for f in m["files"]]
def cols(ps):
    a = [uproot.open(p)["Events"].arrays(library="np") for p in ps]
    return {k: np.concatenate([x[k] for x in a]) for k in a[0]}
r, g = cols([ref]), cols(paths)
assert sorted(r) == sorted(g), (sorted(r), sorted(g))
for k in r:
    assert r[k].dtype == g[k].dtype and np.array_equal(r[k].view(np.uint32), g[k].view(np.uint32)), k
print(f"{len(paths)} files, {len(next(iter(r.values())))} events identical")
'
PY=${FEDHEX_PYTHON:-python3}
msg=$("$PY" -c "$SAME" "$SLT/sample-ref.root" "$SOUT/one" 2>&1)
check "sample.sbatch: the part files in manifest order are fedhex sample's events" $? "$(tail -1 <<<"$msg")"
msg=$("$PY" -c "$SAME" "$SLT/sample-ref.root" "$SOUT"/array/task-0000{0,1,2} 2>&1)
check "sample-array.sbatch: the tasks' files in task and manifest order are fedhex sample's events" $? "$(tail -1 <<<"$msg")"
