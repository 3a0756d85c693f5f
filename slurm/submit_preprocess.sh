#!/bin/bash
# Submit raw ImageNet → shards as three dependent Slurm jobs and print their ids.
#
#   slurm/submit_preprocess.sh RAW DST [--tasks N] [-- EXTRA_PREPARE_ARGS...]
#   slurm/submit_preprocess.sh /data/raw-imagenet /data/imagenet --tasks 16 -- --shard-size 1000
#   SBATCH_ARGS="--partition=cpu --cpus-per-task=32 --time=4:00:00" slurm/submit_preprocess.sh ...
#
# 1. an array of N tasks: `prepare RAW DST --stage resize` (each task resizes its slice);
# 2. afterany: an array of N tasks: `prepare RAW DST --stage shard` (each writes its shards);
# 3. afterany: `finish DST`: merge DST/train and DST/val manifests, then `preprocess verify DST`
#    (shards and resized folders), then list the images that could not be decoded.
# Sharding waits for every resize task because the global shuffle needs the whole list.
#
# Why afterany, not afterok. A resize task that meets undecodable images still finishes its
# slice and exits 1 ("finished, some images failed", as `prepare` does). With afterok that
# would leave the rest of the chain pending forever (DependencyNeverSatisfied) with no message.
# So each stage starts once the previous one has ended, whatever its exit status, and checks
# for itself whether it may run:
#  - every task records its exit status in DST/.slurm-chain/<submission>/ (slurm/preprocess.sbatch);
#    a task killed by Slurm (time limit, memory, node failure) records nothing = not finished;
#  - a shard task refuses (exit 2, naming the tasks and their jobs) unless every resize task
#    recorded 0 or 1; `prepare --stage shard` itself also refuses until every resize task has
#    written its completion record (preprocess/prepare.py);
#  - the finish job fails (exit 2, naming them) unless every resize task recorded 0 or 1 and
#    every shard task 0, and merge and verify of the shards pass.
# With undecodable images the chain runs to the end: the shards are merged, verified and hold
# every other image, and the finish job lists the images left out (also in
# DST/folders/{train,val}/resize_errors*.txt) and exits 1, as `prepare` does. To repair a
# broken chain, fix the cause shown in the failed task's log and run this script again with
# the same arguments: finished images and complete shards are skipped.
#
# A bucket. DST=s3://bucket/prefix: the tasks write in a staging folder that every node sees,
# STAGING (default PROJECT_DIR/.prepare-staging/BUCKET/PREFIX; put it on shared scratch), each
# shard task uploads its own shards, and the finish job uploads the manifests and _info.json
# last, verifies the bucket and removes STAGING (preprocess/upload.py).
#
# Paths. RAW, DST and a --labels file may be relative to where you run this: they are made
# absolute before submitting, because the jobs run in PROJECT_DIR.
# SBATCH_ARGS (word-split) go to every sbatch call; PYTHON and PROJECT_DIR are passed through
# to the jobs (see slurm/preprocess.sbatch).
set -euo pipefail

usage() { echo "usage: $0 RAW DST [--tasks N] [-- EXTRA_PREPARE_ARGS...]" >&2; exit 2; }
[ "$#" -ge 2 ] || usage
raw=$1 dst=$2
shift 2
tasks=8
while [ "$#" -gt 0 ]; do
    case "$1" in
        --tasks) [ "$#" -ge 2 ] || usage; tasks=$2; shift 2 ;;
        --) shift; break ;;
        *) usage ;;
    esac
done
[[ "$tasks" =~ ^[1-9][0-9]*$ ]] || { echo "error: --tasks $tasks: expected a positive integer" >&2; exit 2; }
[ -e "$raw" ] || { echo "error: RAW $raw does not exist: pass the folder holding the raw ImageNet download" >&2; exit 2; }
raw=$(realpath -- "$raw")
here=$(cd "$(dirname "$0")" && pwd)
export PROJECT_DIR=${PROJECT_DIR:-$(dirname "$here")}
url=""
if [[ "$dst" =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]]; then
    url=$dst
    where=${url#*://}
    dst=$(realpath -m -- "${STAGING:-$PROJECT_DIR/.prepare-staging/${where%/}}")
fi
dst=$(realpath -m -- "$dst")
[ ! -e "$dst" ] || [ -d "$dst" ] || { echo "error: DST $dst exists and is not a directory: pass an output directory" >&2; exit 2; }
# The only path among prepare's options: make it absolute too.
prepare_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --labels) [ "$#" -ge 2 ] || usage; prepare_args+=(--labels "$(realpath -m -- "$2")"); shift 2 ;;
        --labels=*) prepare_args+=("--labels=$(realpath -m -- "${1#--labels=}")"); shift ;;
        *) prepare_args+=("$1"); shift ;;
    esac
done

script="$here/preprocess.sbatch"
read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"

# Where the tasks record their exit status: one fresh directory per submission.
chain="$dst/.slurm-chain/$(date -u +%Y%m%dT%H%M%SZ)-$$"
mkdir -p "$chain"
echo "$tasks" > "$chain/tasks"

target=$dst finish_args=("$dst" "$chain")
if [ -n "$url" ]; then  # the tasks write in STAGING ($dst) and upload to the URL
    prepare_args+=(--staging "$dst")
    target=$url finish_args=("$url" "$chain" "$dst")
fi

# --parsable prints "ID" or "ID;CLUSTER"
submit() { local out; out=$(sbatch --parsable "${sbatch_args[@]}" "$@") || exit 1; echo "${out%%;*}"; }
resize=$(submit --array="0-$((tasks - 1))" "$script" chain resize "$chain" "$raw" "$target" "${prepare_args[@]}")
shard=$(submit --array="0-$((tasks - 1))" --dependency="afterany:$resize" "$script" chain shard "$chain" "$raw" "$target" "${prepare_args[@]}")
finish=$(submit --dependency="afterany:$shard" "$script" finish "${finish_args[@]}")
echo "resize=$resize shard=$shard finish=$finish" > "$chain/jobs"
echo "resize=$resize shard=$shard finish=$finish"
