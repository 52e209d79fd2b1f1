# shellcheck shell=bash
# Functions shared by the FEDHEX batch scripts (slurm/*.sbatch). Sourced, not run.
#
#   fedhex_setup        resolve paths and settings from the environment (below)
#   fedhex_preflight    refuse bad set-ups with one clear error each
#   fedhex_train ARGS   srun fedhex-worker train ... --resume ARGS, forwarding the
#                       time-limit warning and requeueing the job when it stopped early
#   fedhex_sample ARGS  srun fedhex-worker sample --model $FEDHEX_MODEL --out <dir> ARGS
#                       (the labels split over the ranks; an array task takes --part I/N)
#
# Settings (environment; all optional except where a script sets them):
#   FEDHEX_HOME      checkout or install prefix (default: the directory above slurm/)
#   FEDHEX_BIN       directory holding fedhex-worker and fedhex (default: $FEDHEX_HOME/target/release,
#                    else whatever is on PATH, e.g. from a module or a container)
#   FEDHEX_CONFIG    run configuration (default: $SLURM_SUBMIT_DIR/run.toml)
#   RUN_DIR          run directory on shared storage (default: $SLURM_SUBMIT_DIR/runs/<job name>-<job id>);
#                    keep it the same to resume (the job id survives requeues)
#   FEDHEX_GPUS      required | none | auto   (set by each script)
#   FEDHEX_LAUNCHER  srun (default) | mpirun
#   FEDHEX_SRUN_MPI  srun's --mpi plugin (default pmix; pmi2 also works with OpenMPI built with it)
#   FEDHEX_CONTROL_LISTEN  control plane address (default 0.0.0.0:0: reachable from the login node)
#   FEDHEX_WRAP      command put in front of fedhex-worker on every rank (e.g. "apptainer exec --nv fedhex.sif")
#   FEDHEX_SRUN_ARGS extra srun options for the training step (e.g. "--gpu-bind=closest")
#   FEDHEX_ALLOW_GPU_SHARING=1  accept fewer GPUs than tasks on a node
#   FEDHEX_SELF_REQUEUE=0       do not requeue after the time-limit warning
#   FEDHEX_CHECK_SHARED=1       check run dir + worker on every node even for a one-node job (always done for more)
#   FEDHEX_JOB       train (default) | sample   (set by each script)
# Generation (FEDHEX_JOB=sample, slurm/sample*.sbatch):
#   FEDHEX_MODEL     model directory (default: $SLURM_SUBMIT_DIR/run/model)
#   SAMPLE_OUT       output directory on shared storage (one job, default: $SLURM_SUBMIT_DIR/samples/<job name>-<job id>);
#                    an array job needs it set: task I writes SAMPLE_OUT/task-IIIII
#   FEDHEX_PARTS     array jobs: the number of slices N of --part I/N (default: the array's task count, which
#                    must then be --array=0-(N-1)); set it when resubmitting some tasks (sbatch --array=3,7)

fedhex_log() { echo "fedhex-slurm $(date +%H:%M:%S): $*"; }
fedhex_fail() {
  echo "fedhex-slurm: error: $*" >&2
  echo "fedhex-slurm: error: $*"
  exit 2
}

# The directory of the submitted script. sbatch runs a copy from its spool
# directory, so $0 does not help; scontrol knows the original path.
fedhex_script_dir() {
  local cmd=""
  if [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null 2>&1; then
    cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -1)
  fi
  if [ -n "$cmd" ] && [ -f "$cmd" ]; then dirname "$cmd"; else dirname "${BASH_SOURCE[0]}"; fi
}

# Number of tasks Slurm puts on this node (SLURM_TASKS_PER_NODE looks like "4(x2),3").
fedhex_tasks_on_node() {
  if [ -n "${SLURM_NTASKS_PER_NODE:-}" ]; then echo "$SLURM_NTASKS_PER_NODE"; return; fi
  local t=${SLURM_TASKS_PER_NODE:-${SLURM_NTASKS:-1}}
  t=${t%%,*}
  echo "${t%%(*}"
}

# GPUs this job can see on this node: CUDA_VISIBLE_DEVICES as Slurm set it,
# else what nvidia-smi lists.
fedhex_visible_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
    case "$CUDA_VISIBLE_DEVICES" in
      "" | NoDevFiles | -1) echo 0 ;;
      *) awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES" ;;
    esac
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

fedhex_setup() {
  FEDHEX_HOME=${FEDHEX_HOME:-$(cd "$(fedhex_script_dir)/.." && pwd)}
  if [ -z "${FEDHEX_BIN:-}" ]; then
    if [ -x "$FEDHEX_HOME/target/release/fedhex-worker" ]; then
      FEDHEX_BIN=$FEDHEX_HOME/target/release
    elif command -v fedhex-worker >/dev/null 2>&1; then
      FEDHEX_BIN=$(dirname "$(command -v fedhex-worker)")
    else
      FEDHEX_BIN=$FEDHEX_HOME/target/release
    fi
  fi
  FEDHEX_WORKER=$FEDHEX_BIN/fedhex-worker
  local submit=${SLURM_SUBMIT_DIR:-$PWD}
  FEDHEX_CONFIG=${FEDHEX_CONFIG:-$submit/run.toml}
  RUN_DIR=${RUN_DIR:-$submit/runs/${SLURM_JOB_NAME:-fedhex}-${SLURM_JOB_ID:-local}}
  case "$RUN_DIR" in /*) ;; *) RUN_DIR=$submit/$RUN_DIR ;; esac
  FEDHEX_JOB=${FEDHEX_JOB:-train}
  if [ "$FEDHEX_JOB" = sample ]; then
    fedhex_setup_sample "$submit"
  fi
  FEDHEX_GPUS=${FEDHEX_GPUS:-auto}
  FEDHEX_LAUNCHER=${FEDHEX_LAUNCHER:-srun}
  FEDHEX_SRUN_MPI=${FEDHEX_SRUN_MPI:-pmix}
  FEDHEX_CONTROL_LISTEN=${FEDHEX_CONTROL_LISTEN:-0.0.0.0:0}
  FEDHEX_THREADS=${SLURM_CPUS_PER_TASK:-0}
  export FEDHEX_HOME FEDHEX_BIN FEDHEX_CONFIG RUN_DIR
  # plain log lines in the .err file (the worker's tracing output is coloured otherwise)
  export NO_COLOR=${NO_COLOR:-1}
  fedhex_log "job ${SLURM_JOB_ID:-?} (${SLURM_JOB_NAME:-?}) restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
    "${SLURM_NTASKS:-1} task(s), ${SLURM_CPUS_PER_TASK:-?} cpu(s)/task, GPUs ${FEDHEX_GPUS}"
  if [ "$FEDHEX_JOB" = sample ]; then
    fedhex_log "worker $FEDHEX_WORKER, model $FEDHEX_MODEL, output $SAMPLE_DIR${FEDHEX_PART:+ (--part $FEDHEX_PART)}"
  else
    fedhex_log "worker $FEDHEX_WORKER, config $FEDHEX_CONFIG, run dir $RUN_DIR"
  fi
}

# Generation settings: the model, the output directory (an array task's own
# task-IIIII inside SAMPLE_OUT) and the slice of the labels (--part I/N).
# RUN_DIR becomes the directory the output is created in, which the preflight
# checks like a run directory (writable, on storage every node sees).
fedhex_setup_sample() {
  local submit=$1
  FEDHEX_MODEL=${FEDHEX_MODEL:-$submit/run/model}
  case "$FEDHEX_MODEL" in /*) ;; *) FEDHEX_MODEL=$submit/$FEDHEX_MODEL ;; esac
  FEDHEX_PART=""
  if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    [ -n "${SAMPLE_OUT:-}" ] || fedhex_fail "an array job needs SAMPLE_OUT (a directory on shared storage; task I writes SAMPLE_OUT/task-IIIII)"
    if [ -z "${FEDHEX_PARTS:-}" ]; then
      local min=${SLURM_ARRAY_TASK_MIN:-0} max=${SLURM_ARRAY_TASK_MAX:-0} count=${SLURM_ARRAY_TASK_COUNT:-0}
      [ "$min" = 0 ] && [ $((max + 1)) = "$count" ] ||
        fedhex_fail "array tasks $min..$max ($count of them): use --array=0-(N-1), or set FEDHEX_PARTS=N (the number of slices) when submitting some tasks of an N-task array"
      FEDHEX_PARTS=$count
    fi
    FEDHEX_PART=$SLURM_ARRAY_TASK_ID/$FEDHEX_PARTS
    SAMPLE_DIR=$SAMPLE_OUT/task-$(printf %05d "$SLURM_ARRAY_TASK_ID")
  else
    SAMPLE_DIR=${SAMPLE_OUT:-$submit/samples/${SLURM_JOB_NAME:-fedhex}-${SLURM_JOB_ID:-local}}
  fi
  case "$SAMPLE_DIR" in /*) ;; *) SAMPLE_DIR=$submit/$SAMPLE_DIR ;; esac
  RUN_DIR=$(dirname "$SAMPLE_DIR")
  export FEDHEX_MODEL SAMPLE_DIR
}

# Runs a command on this node the way the ranks will run it (inside FEDHEX_WRAP, if any).
fedhex_in() {
  local wrap=()
  # shellcheck disable=SC2206 # FEDHEX_WRAP is a command line
  [ -n "${FEDHEX_WRAP:-}" ] && wrap=($FEDHEX_WRAP)
  "${wrap[@]}" "$@"
}

fedhex_preflight() {
  # 1. The worker and the libraries it needs (libtorch, libmpi) on this node.
  if [ -z "${FEDHEX_WRAP:-}" ]; then
    [ -e "$FEDHEX_WORKER" ] || fedhex_fail "fedhex-worker not found at $FEDHEX_WORKER (set FEDHEX_BIN, load the fedhex module, or build with 'make build')"
    [ -x "$FEDHEX_WORKER" ] || fedhex_fail "$FEDHEX_WORKER is not executable"
    local missing
    missing=$(ldd "$FEDHEX_WORKER" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
    [ -z "$missing" ] || fedhex_fail "$FEDHEX_WORKER cannot load: ${missing}(load the MPI/libtorch modules it was built with, or set LD_LIBRARY_PATH)"
  fi
  local out
  out=$(fedhex_in "$FEDHEX_WORKER" --version 2>&1) || fedhex_fail "'${FEDHEX_WRAP:+$FEDHEX_WRAP }$FEDHEX_WORKER --version' fails on $(hostname): $out"
  # 2. The launcher and its MPI.
  case "$FEDHEX_LAUNCHER" in
    srun)
      command -v srun >/dev/null 2>&1 || fedhex_fail "srun not found on PATH (not inside a Slurm job?)"
      if [ "$FEDHEX_SRUN_MPI" != none ] && ! srun --mpi=list 2>&1 | grep -qw "$FEDHEX_SRUN_MPI"; then
        fedhex_fail "this Slurm has no '$FEDHEX_SRUN_MPI' MPI plugin (srun --mpi=list: $(srun --mpi=list 2>&1 | tr '\n' ' ')); set FEDHEX_SRUN_MPI to one it lists that your OpenMPI supports, or FEDHEX_LAUNCHER=mpirun"
      fi
      ;;
    mpirun)
      command -v mpirun >/dev/null 2>&1 || fedhex_fail "mpirun not found on PATH (load the OpenMPI module FEDHEX was built with)" ;;
    *) fedhex_fail "FEDHEX_LAUNCHER must be srun or mpirun, not '$FEDHEX_LAUNCHER'" ;;
  esac
  # 3. The configuration (training) or the model (generation).
  local dir_what="run directory"
  if [ "${FEDHEX_JOB:-train}" = sample ]; then
    dir_what="output's parent directory"
    [ -r "$FEDHEX_MODEL/model.json" ] || { [ -f "$FEDHEX_MODEL" ] && [ -r "$FEDHEX_MODEL" ]; } ||
      fedhex_fail "model $FEDHEX_MODEL not readable (set FEDHEX_MODEL to a model directory, e.g. RUN_DIR/model)"
  else
    [ -r "$FEDHEX_CONFIG" ] || fedhex_fail "run configuration $FEDHEX_CONFIG not readable (set FEDHEX_CONFIG)"
  fi
  # 4. The run directory (generation: where the output directory is created): writable here,
  # and not node-local when the job spans nodes or may be requeued elsewhere.
  case "$RUN_DIR" in *\"* | *\\*) fedhex_fail "$dir_what '$RUN_DIR' contains a quote or backslash" ;; esac
  mkdir -p "$RUN_DIR" 2>/dev/null || fedhex_fail "cannot create the $dir_what $RUN_DIR"
  local probe="$RUN_DIR/.fedhex-write-test.$$"
  if ! (: >"$probe") 2>/dev/null; then fedhex_fail "$dir_what $RUN_DIR is not writable by $(id -un)"; fi
  rm -f "$probe"
  if [ "$FEDHEX_LAUNCHER" = srun ] && { [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ] || [ "${FEDHEX_CHECK_SHARED:-0}" = 1 ]; }; then
    # Every rank reads the checkpoint when resuming: the run directory and the
    # worker must be visible on every node. One quick step, one task per node.
    local mark="$RUN_DIR/.fedhex-shared-check.${SLURM_JOB_ID:-0}"
    : >"$mark"
    # shellcheck disable=SC2016 # the snippet runs on each node
    out=$(srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --cpus-per-task=1 \
      --mpi=none --kill-on-bad-exit=0 \
      bash -c 'test -e "$1" || echo "$(hostname): $4 not visible ($1)"; $3 test -x "$2" || echo "$(hostname): no $2"' \
      _ "$mark" "$FEDHEX_WORKER" "${FEDHEX_WRAP:-}" "$dir_what" 2>&1)
    rm -f "$mark"
    [ -z "$out" ] || fedhex_fail "not every node sees the $dir_what and the worker (shared storage?): $(tr '\n' ';' <<<"$out")"
  fi
  case "$RUN_DIR" in
    /tmp/* | /dev/shm/* | /var/tmp/* | /scratch/local/*)
      [ "${FEDHEX_JOB:-train}" = sample ] ||
        fedhex_log "warning: $RUN_DIR looks node-local; a requeued job may start on another node and not find its checkpoints" ;;
  esac
  # 5. GPUs.
  local gpus tasks
  gpus=$(fedhex_visible_gpus)
  tasks=$(fedhex_tasks_on_node)
  case "$FEDHEX_GPUS" in
    required)
      [ "$gpus" -gt 0 ] || fedhex_fail "GPUs were requested but none is visible on $(hostname) (CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES-unset}', nvidia-smi: $(command -v nvidia-smi || echo missing)); check --gpus-per-task/--gres and the partition"
      if [ "$gpus" -lt "$tasks" ] && [ "${FEDHEX_ALLOW_GPU_SHARING:-0}" != 1 ]; then
        fedhex_fail "$tasks tasks on $(hostname) but only $gpus GPU(s) visible: ranks would share GPUs; request one GPU per task (--gpus-per-task=1 or --gpus-per-node=$tasks) or set FEDHEX_ALLOW_GPU_SHARING=1"
      fi
      local doctor
      if doctor=$(fedhex_in "$FEDHEX_BIN/fedhex" doctor 2>&1); then
        grep -q 'cuda *available: true' <<<"$doctor" ||
          fedhex_fail "libtorch sees no CUDA device on $(hostname) ('fedhex doctor': $(grep -i cuda <<<"$doctor")); a CPU-only torch, a driver too old for it, or a container started without --nv?"
      fi
      ;;
    none) ;;
    auto) fedhex_log "visible GPUs on $(hostname): $gpus for $tasks task(s)" ;;
    *) fedhex_fail "FEDHEX_GPUS must be required, none or auto, not '$FEDHEX_GPUS'" ;;
  esac
  [ -n "${SLURM_CPUS_PER_TASK:-}" ] || fedhex_log "note: no --cpus-per-task; each rank uses its node's cores / local ranks threads"
  fedhex_log "preflight ok"
}

# Signals reaching the batch shell: USR1 is the time-limit warning
# (--signal=B:USR1@SECONDS) or a preemption notice; TERM comes from scancel,
# scontrol requeue, preemption or the time limit. Either way: pass it on to the
# job step, whose ranks then stop at the next step boundary and rank 0 writes a
# resumable checkpoint.
_fedhex_forward() {
  local sig=$1
  _FEDHEX_SIGNALLED=$sig
  _FEDHEX_NSIG=$((_FEDHEX_NSIG + 1))
  fedhex_log "batch shell got SIG$sig; asking the ranks to checkpoint and stop"
  if [ -n "${_FEDHEX_STEP_PID:-}" ]; then
    kill -s "$sig" "$_FEDHEX_STEP_PID" 2>/dev/null || true
  fi
}

# The launcher and its options (cmd) and the wrapper in front of the worker
# (wrap), into the caller's local arrays of those names.
fedhex_launch_cmd() {
  # shellcheck disable=SC2206 # FEDHEX_WRAP is a command line
  [ -n "${FEDHEX_WRAP:-}" ] && wrap=($FEDHEX_WRAP)
  case "$FEDHEX_LAUNCHER" in
    srun)
      cmd=(srun --kill-on-bad-exit=1)
      [ "$FEDHEX_SRUN_MPI" != none ] && cmd+=(--mpi="$FEDHEX_SRUN_MPI")
      # Slurm >= 22.05: srun no longer inherits --cpus-per-task from the allocation.
      [ -n "${SLURM_CPUS_PER_TASK:-}" ] && cmd+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
      # shellcheck disable=SC2206 # extra srun options, e.g. "--gpu-bind=closest"
      [ -n "${FEDHEX_SRUN_ARGS:-}" ] && cmd+=($FEDHEX_SRUN_ARGS)
      ;;
    mpirun)
      cmd=(mpirun)
      [ "$(id -u)" -eq 0 ] && cmd+=(--allow-run-as-root)
      ;;
  esac
}

fedhex_train() {
  local args=(train --config "$FEDHEX_CONFIG"
    --set "outputs.run_dir=\"$RUN_DIR\""
    --set "training.threads=$FEDHEX_THREADS"
    --set "control.listen=\"$FEDHEX_CONTROL_LISTEN\""
    --set "outputs.progress=false")
  [ "$FEDHEX_GPUS" = none ] && args+=(--set 'training.device="cpu"')
  args+=("$@")
  # Resume whenever a complete checkpoint exists (checkpoints are renamed into
  # place only when complete). Passing --resume unconditionally would be enough
  # in principle, but fedhex-worker with more than one rank aborts in MPI_Bcast
  # when --resume finds no checkpoint (see slurm/README.md), so ask only then.
  if compgen -G "$RUN_DIR/checkpoints/epoch-*/state.json" >/dev/null; then
    args+=(--resume)
    fedhex_log "checkpoints in $RUN_DIR/checkpoints: resuming from the newest"
  else
    fedhex_log "no checkpoint in $RUN_DIR/checkpoints yet: starting a fresh run"
  fi
  local wrap=() cmd=()
  fedhex_launch_cmd
  local stamp="$RUN_DIR/.fedhex-step-start.${SLURM_JOB_ID:-0}"
  : >"$stamp"
  _FEDHEX_SIGNALLED=""
  _FEDHEX_NSIG=0
  trap '_fedhex_forward USR1' USR1
  trap '_fedhex_forward TERM' TERM
  trap '_fedhex_forward INT' INT
  fedhex_log "launching: ${cmd[*]} ${wrap[*]} $FEDHEX_WORKER ${args[*]}"
  "${cmd[@]}" "${wrap[@]}" "$FEDHEX_WORKER" "${args[@]}" &
  _FEDHEX_STEP_PID=$!
  # `wait` returns early when a trapped signal arrives; wait again until the step ends.
  local rc n
  while :; do
    n=$_FEDHEX_NSIG
    wait "$_FEDHEX_STEP_PID"
    rc=$?
    # interrupted by a trapped signal (the step itself is still running or not yet reaped)
    [ "$n" != "$_FEDHEX_NSIG" ] && [ "$rc" -gt 128 ] && continue
    break
  done
  trap - USR1 TERM INT
  _FEDHEX_STEP_PID=""
  local completed=0
  [ "$RUN_DIR/model/model.safetensors" -nt "$stamp" ] && completed=1
  rm -f "$stamp"
  fedhex_log "job step ended: exit $rc, $([ $completed = 1 ] && echo "training complete, model in $RUN_DIR/model" || echo "training not complete")"
  if [ "$rc" -eq 0 ] && [ $completed = 0 ] && [ "$_FEDHEX_SIGNALLED" = USR1 ] && [ -n "${SLURM_JOB_ID:-}" ] &&
    [ "${FEDHEX_SELF_REQUEUE:-1}" = 1 ]; then
    # Stopped by the time-limit warning: put the job back in the queue; the next
    # start resumes from the checkpoint just written.
    fedhex_log "requeueing job $SLURM_JOB_ID to continue from the newest checkpoint"
    scontrol requeue "$SLURM_JOB_ID" || fedhex_log "warning: scontrol requeue failed; resume by hand (see slurm/README.md)"
    sleep 5
  fi
  return "$rc"
}

# Generation over the job's ranks: each rank writes one file of its slice of
# the labels into $SAMPLE_DIR, rank 0 the manifest; the directory appears only
# when complete, so a failed, cancelled or timed-out job leaves none and is
# simply submitted again (no requeue or resume: the events are the same).
fedhex_sample() {
  local args=(sample --model "$FEDHEX_MODEL" --out "$SAMPLE_DIR" --threads "$FEDHEX_THREADS")
  [ "$FEDHEX_GPUS" = none ] && args+=(--device cpu)
  [ -n "$FEDHEX_PART" ] && args+=(--part "$FEDHEX_PART")
  args+=("$@")
  local wrap=() cmd=()
  fedhex_launch_cmd
  fedhex_log "launching: ${cmd[*]} ${wrap[*]} $FEDHEX_WORKER ${args[*]}"
  "${cmd[@]}" "${wrap[@]}" "$FEDHEX_WORKER" "${args[@]}"
  local rc=$?
  if [ "$rc" -eq 0 ]; then
    fedhex_log "job step ended: exit 0, events and manifest in $SAMPLE_DIR"
  else
    fedhex_log "job step ended: exit $rc, no output written (submit again once the error above is fixed)"
  fi
  return "$rc"
}
