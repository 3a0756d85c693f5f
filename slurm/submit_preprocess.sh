#!/bin/bash
# Submit raw ImageNet → shards as three dependent Slurm jobs and print their ids.
#
#   slurm/submit_preprocess.sh RAW DST [--tasks N] [-- EXTRA_PREPARE_ARGS...]
#   slurm/submit_preprocess.sh /data/raw-imagenet /data/imagenet --tasks 16 -- --shard-size 1000
#   SBATCH_ARGS="--partition=cpu --cpus-per-task=32 --time=4:00:00" slurm/submit_preprocess.sh ...
#
# 1. an array of N tasks: `prepare RAW DST --stage resize` (each task resizes its slice);
# 2. afterok: an array of N tasks: `prepare RAW DST --stage shard` (each writes its shards);
# 3. afterok: `finish DST`: merge DST/train and DST/val manifests, then `preprocess verify DST`.
# Sharding waits for every resize task because the global shuffle needs the whole list.
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

here=$(cd "$(dirname "$0")" && pwd)
script="$here/preprocess.sbatch"
read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"
export PROJECT_DIR=${PROJECT_DIR:-$(dirname "$here")}

# --parsable prints "ID" or "ID;CLUSTER"
submit() { local out; out=$(sbatch --parsable "${sbatch_args[@]}" "$@") || exit 1; echo "${out%%;*}"; }
resize=$(submit --array="0-$((tasks - 1))" "$script" prepare "$raw" "$dst" --stage resize "$@")
shard=$(submit --array="0-$((tasks - 1))" --dependency="afterok:$resize" "$script" prepare "$raw" "$dst" --stage shard "$@")
finish=$(submit --dependency="afterok:$shard" "$script" finish "$dst")
echo "resize=$resize shard=$shard finish=$finish"
