#!/usr/bin/env bash
# Trains vlp_jax on a Cloud TPU VM slice: creates the slice if needed, puts the code on every worker,
# installs it with jax[tpu], starts `python -m vlp_jax.train` on all workers and streams worker 0's log.
#
#   launch/tpu_pod.sh [--dry-run] [OPTIONS] -- --config configs/NAME.py[:ARG] --workdir WORKDIR [--config.KEY=VALUE ...]
#   launch/tpu_pod.sh [--dry-run] [OPTIONS] --logs      stream the running job's log again (worker 0)
#   launch/tpu_pod.sh [--dry-run] [OPTIONS] --delete    delete the slice
#
# Options (each has an environment variable; the flag wins):
#   --name NAME               TPU_NAME              the slice's name (default vlp-jax)
#   --zone ZONE               TPU_ZONE              required, e.g. us-central2-b
#   --project PROJECT         TPU_PROJECT           default: gcloud's configured project
#   --accelerator-type TYPE   TPU_ACCELERATOR_TYPE  e.g. v4-32, v5p-64, v5litepod-16, v6e-16 (default v4-32)
#   --version VERSION         TPU_RUNTIME_VERSION   default from the type: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
#                                                   v5litepod v2-alpha-tpuv5-lite, older tpu-ubuntu2204-base
#   --spot                    TPU_SPOT=1            create a Spot slice (cheaper, can be preempted)
#   --source copy|GIT_URL     TPU_SOURCE            copy this checkout's tracked files as they are on disk (git
#                                                   ls-files: untracked files such as runs and data stay here;
#                                                   the default) or git clone GIT_URL on every worker
#   --ref REF                 TPU_REF               branch or tag to clone (default main)
#   --python PYTHON           TPU_PYTHON            interpreter for the venv on the workers (default python3.11,
#                                                   installed with apt when missing: the images ship 3.10)
#   --jax-extra EXTRA         TPU_JAX_EXTRA         pip extra of jax (default tpu: installs libtpu)
#   --delete-after                                  delete the slice once training has finished with status 0
#                                                   (a failed or cut-off run keeps it, for its logs)
#
# WORKDIR must be storage every worker sees (orbax writes each process's shards into it): a gs:// path
# (mounted with gcsfuse at /gcs/BUCKET on every worker and passed to train as that path), or a shared
# filesystem (e.g. Filestore NFS) mounted at the same path on all workers. Config files are paths in
# the repository on the workers; frozen-model checkpoints must also be on shared storage.
#
# Training runs detached on the workers (nohup), so closing this terminal does not stop it: re-run
# with --logs to watch again. Resuming after a preemption is re-running the same command: a preempted
# slice is deleted and created again, and train resumes from the newest checkpoint in WORKDIR. A
# re-run while training is still running only attaches to its log.
#
# --dry-run prints every gcloud command, and the script that runs on the workers, without running them.
set -euo pipefail
{  # read whole before it runs: editing this file (a git pull) cannot break a launch in progress

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

dry_run=0
action=train
delete_after=0
name="${TPU_NAME:-vlp-jax}"
zone="${TPU_ZONE:-}"
project="${TPU_PROJECT:-}"
accelerator_type="${TPU_ACCELERATOR_TYPE:-v4-32}"
runtime_version="${TPU_RUNTIME_VERSION:-}"
spot="${TPU_SPOT:-0}"
source_="${TPU_SOURCE:-copy}"
ref="${TPU_REF:-main}"
python="${TPU_PYTHON:-python3.11}"
jax_extra="${TPU_JAX_EXTRA:-tpu}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --delete) action=delete; shift ;;
    --logs) action=logs; shift ;;
    --delete-after) delete_after=1; shift ;;
    --spot) spot=1; shift ;;
    --name|--zone|--project|--accelerator-type|--version|--source|--ref|--python|--jax-extra)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --name) name="$2" ;;
        --zone) zone="$2" ;;
        --project) project="$2" ;;
        --accelerator-type) accelerator_type="$2" ;;
        --version) runtime_version="$2" ;;
        --source) source_="$2" ;;
        --ref) ref="$2" ;;
        --python) python="$2" ;;
        --jax-extra) jax_extra="$2" ;;
      esac
      shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) die "unknown option $1 (train's arguments go after --)" ;;
  esac
done
train_args=("$@")

[[ -n "$zone" ]] || die "--zone (or TPU_ZONE) is required, e.g. --zone us-central2-b"
if [[ -z "$runtime_version" ]]; then
  case "$accelerator_type" in
    v6e-*) runtime_version=v2-alpha-tpuv6e ;;
    v5p-*) runtime_version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) runtime_version=v2-alpha-tpuv5-lite ;;
    *) runtime_version=tpu-ubuntu2204-base ;;
  esac
fi

# gcloud's location flags, shared by every command.
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)

quote() {  # the words of a command as one line a shell would read back the same
  local out="" word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="$word "
    else
      out+="'${word//\'/\'\\\'\'}' "
    fi
  done
  echo "${out% }"
}

run() {  # prints the command; runs it unless --dry-run
  echo "+ $(quote "$@")"
  [[ "$dry_run" == 1 ]] || "$@"
}

ssh_all() { run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"; }
ssh_worker0() { run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=0 --command="$1"; }

remote_script=vlp_jax_run.sh

if [[ "$action" == delete ]]; then
  run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  exit 0
fi
if [[ "$action" == logs ]]; then
  ssh_worker0 "bash ~/$remote_script logs"
  ssh_all "bash ~/$remote_script status"
  exit 0
fi

# The workdir: gs://BUCKET/PATH is mounted with gcsfuse and handed to train as /gcs/BUCKET/PATH.
workdir=""
bucket=""
for ((i = 0; i < ${#train_args[@]}; i++)); do
  case "${train_args[$i]}" in
    --workdir) [[ $((i + 1)) -lt ${#train_args[@]} ]] && workdir="${train_args[$((i + 1))]}" && workdir_index=$((i + 1)) ;;
    --workdir=*) workdir="${train_args[$i]#--workdir=}"; workdir_index=$i ;;
  esac
done
[[ -n "$workdir" ]] || die "train's arguments (after --) need --workdir: a gs:// path or a shared filesystem path"
case "$workdir" in
  gs://*)
    rest="${workdir#gs://}"
    bucket="${rest%%/*}"
    local_workdir="/gcs/$rest"
    if [[ "${train_args[$workdir_index]}" == --workdir=* ]]; then
      train_args[workdir_index]="--workdir=$local_workdir"
    else
      train_args[workdir_index]="$local_workdir"
    fi ;;
  /*) ;;
  *) die "--workdir $workdir must be gs://BUCKET/PATH or an absolute path on a filesystem every worker mounts" ;;
esac

# The script each worker runs (setup | start | train | logs | status), written here and copied over.
tmp_dir="$(mktemp -d "${TMPDIR:-/tmp}/tpu_pod.XXXXXX")"
trap 'rm -rf "$tmp_dir"' EXIT
{
  cat <<EOF
#!/usr/bin/env bash
# Written by launch/tpu_pod.sh for slice $name. Usage on a worker: bash ~/$remote_script setup|start|train|logs|status
set -euo pipefail
CODE_DIR="\$HOME/vlp_jax"
VENV="\$HOME/vlp_jax_venv"
LOG="\$HOME/vlp_jax_train.log"
PID_FILE="\$HOME/vlp_jax_train.pid"
RC_FILE="\$HOME/vlp_jax_train.rc"
SOURCE=$(printf '%q' "$source_")
REF=$(printf '%q' "$ref")
PYTHON=$(printf '%q' "$python")
JAX_EXTRA=$(printf '%q' "$jax_extra")
BUCKET=$(printf '%q' "$bucket")
TRAIN_ARGS=($(for a in ${train_args[@]+"${train_args[@]}"}; do printf '%q ' "$a"; done))
EOF
  cat <<'EOF'
running() { [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }
case "${1:-}" in
  setup)
    if running; then echo "$(hostname): training is running; code and environment left as they are"; exit 0; fi
    if ! command -v "$PYTHON" >/dev/null; then
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$PYTHON" "$PYTHON-venv"
    fi
    if [[ "$SOURCE" == copy ]]; then
      rm -rf "$CODE_DIR" && mkdir -p "$CODE_DIR" && tar -xzf "$HOME/vlp_jax_src.tar.gz" -C "$CODE_DIR"
    elif [[ -d "$CODE_DIR/.git" ]]; then
      git -C "$CODE_DIR" fetch --depth 1 origin "$REF" && git -C "$CODE_DIR" checkout --force FETCH_HEAD
    else
      git clone --depth 1 --branch "$REF" "$SOURCE" "$CODE_DIR"
    fi
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$CODE_DIR" "jax[$JAX_EXTRA]"
    if [[ -n "$BUCKET" ]]; then
      if ! command -v gcsfuse >/dev/null; then
        echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" \
          | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
        curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse
      fi
      if ! mountpoint -q "/gcs/$BUCKET"; then
        sudo mkdir -p "/gcs/$BUCKET" && sudo chown "$(id -u):$(id -g)" "/gcs/$BUCKET"
        # No metadata caching: every worker must see the checkpoints the others commit at once;
        # orbax renames a step directory when it commits it.
        gcsfuse --implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0 "$BUCKET" "/gcs/$BUCKET"
      fi
    fi
    ;;
  start)
    if running; then echo "$(hostname): already training (pid $(cat "$PID_FILE")); attaching to it"; exit 0; fi
    rm -f "$RC_FILE"
    nohup setsid bash "$0" train >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    ;;
  train)
    cd "$CODE_DIR"
    export VLP_JAX_DISTRIBUTED=1  # jax.distributed.initialize() finds the slice's workers itself
    echo "=== $(date -u +%FT%TZ) $(hostname): python -m vlp_jax.train ${TRAIN_ARGS[*]}"
    rc=0
    "$VENV/bin/python" -m vlp_jax.train "${TRAIN_ARGS[@]}" || rc=$?
    echo "$rc" >"$RC_FILE"
    exit "$rc"
    ;;
  logs)  # the end of the log, followed until the run ends
    if running; then tail -n 100 --pid="$(cat "$PID_FILE")" -F "$LOG"; else tail -n 100 "$LOG"; fi
    ;;
  status)  # 0: the run finished and exited 0; its status if it failed; 3: still running or never started
    if running; then echo "$(hostname): still training"; exit 3; fi
    [[ -f "$RC_FILE" ]] || { echo "$(hostname): no finished run"; exit 3; }
    rc="$(cat "$RC_FILE")"
    echo "$(hostname): train exited with status $rc"
    exit "$rc"
    ;;
  *) echo "usage: bash $0 setup|start|train|logs|status" >&2; exit 2 ;;
esac
EOF
} >"$tmp_dir/$remote_script"

echo "# slice $name: $accelerator_type, runtime $runtime_version, zone $zone${project:+, project $project}"
echo "# 1. create the slice unless it exists and is READY (a PREEMPTED or otherwise stopped one is deleted first)"
echo "+ $(quote "${tpu[@]}" describe "$name" "${where[@]}" '--format=value(state)')"
state=""
if [[ "$dry_run" != 1 ]]; then
  state="$("${tpu[@]}" describe "$name" "${where[@]}" '--format=value(state)' 2>/dev/null || true)"
  echo "# state: ${state:-none}"
fi
create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator_type" --version="$runtime_version")
[[ "$spot" == 1 ]] && create+=(--spot)
if [[ "$dry_run" == 1 ]]; then
  echo "# if it is not READY:"
  run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  run "${create[@]}"
elif [[ "$state" != READY ]]; then
  [[ -n "$state" ]] && run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  run "${create[@]}"
fi

echo "# 2. copy the code and the worker script to every worker"
files=("$tmp_dir/$remote_script")
if [[ "$source_" == copy ]]; then
  # Tracked files only, as they are on disk (uncommitted edits included, deleted ones left out): runs, data
  # and anything else untracked stay on this machine.
  git -C "$repo_root" rev-parse --git-dir >/dev/null 2>&1 \
    || die "--source copy ships the tracked files of a git checkout, and $repo_root is none; use --source GIT_URL"
  (cd "$repo_root" && git ls-files -z --cached | while IFS= read -r -d '' f; do
    [[ -e "$f" || -L "$f" ]] && printf '%s\0' "$f"
  done) >"$tmp_dir/files"
  shipped="$(tr -cd '\0' <"$tmp_dir/files" | wc -c)"
  size="$(cd "$repo_root" && xargs -0 du -cbL -- <"$tmp_dir/files" 2>/dev/null | tail -n 1 | cut -f 1)"
  commit="$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo none)"
  edited="$(git -C "$repo_root" status --porcelain --untracked-files=no | wc -l)"
  untracked="$(git -C "$repo_root" ls-files --others --exclude-standard | wc -l)"
  echo "# ships $shipped tracked files ($((${size:-0} / 1024)) KiB) of $repo_root at commit $commit" \
    "(${edited} with uncommitted changes); $untracked untracked files stay here (git add one to ship it)"
  echo "+ (cd $(quote "$repo_root") && git ls-files -z --cached | tar --null -T - -czf $(quote "$tmp_dir/vlp_jax_src.tar.gz"))"
  if [[ "$dry_run" != 1 ]]; then
    (cd "$repo_root" && tar --null -T "$tmp_dir/files" -czf "$tmp_dir/vlp_jax_src.tar.gz")
  fi
  files+=("$tmp_dir/vlp_jax_src.tar.gz")
fi
run "${tpu[@]}" scp "${files[@]}" "$name:~/" "${where[@]}" --worker=all

echo "# 3. install (python venv, pip install -e . \"jax[$jax_extra]\"${bucket:+, gcsfuse mount of gs://$bucket at /gcs/$bucket}) on every worker"
ssh_all "bash ~/$remote_script setup"

echo "# 4. start training on every worker (detached), stream worker 0's log, collect every worker's status"
ssh_all "bash ~/$remote_script start"
ssh_worker0 "bash ~/$remote_script logs" || true
status=0
ssh_all "bash ~/$remote_script status" || status=$?
if [[ "$delete_after" == 1 && "$status" == 0 ]]; then
  run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
fi
if [[ "$dry_run" == 1 ]]; then
  echo "# the worker script ~/$remote_script:"
  cat "$tmp_dir/$remote_script"
fi
exit "$status"
}
