#!/usr/bin/env bash
# One GPU lease: the mixed-strategy MM-Net (C in 2..20, k in 1..5) on real Omniglot, trained
# towards the paper's schedule (20,000 steps of 16 episodes, Adam 1e-3) within one 10-minute
# device call, then tested on 5-way and 20-way, 1 and 5 shots (1,000 test episodes, 15
# queries per class, Vinyals test split) for the README's results. The paper's figures are
# 99.28 / 99.77 / 97.16 / 98.93.
#
#   bash benchmarks/gpu_paper_schedule.sh CARRY_DIR OUT_DIR
#
# CARRY_DIR holds datasets/omniglot/ (the two zips and splits/vinyals/), copied from
# ../shared/datasets (which does not travel), and optionally cache/ (a decoded-data cache):
#   mkdir -p .device-data/datasets && cp -r ../shared/datasets/omniglot .device-data/datasets/
# then, from the device tool:  run(command="bash benchmarks/gpu_paper_schedule.sh .device-data $OUT",
#                                  carry=[".device-data"], timeout_s=600)
# The package needs only torch, numpy, pillow and tqdm, which the GPU machine has.
#
# Environment (all optional):
#   TRAIN_TIME   training seconds (default 420: with data loading and the four tests the call
#                stays under 10 minutes); a run stopped by it is tested at the step it reached,
#                and the results line says which; rerunning with the same OUT_DIR resumes
#   STEPS        step cap (default 20000, the paper's first learning-rate period)
#   LR_SCHEDULE  step (default: halve every 20,000 steps, the paper's), budget or cosine
#   BF16         1 (default) for bf16 autocast on the GPU, 0 for fp32
#   EPISODES     test episodes per setting (default 1000)
#   DEVICE       default cuda; PYTHON the interpreter (default python3)
#
# Every figure this writes states its budget (steps reached x 16 episodes): it is "the
# paper's schedule" only if all 20,000 steps were reached.
set -euo pipefail
cd "$(dirname "$0")/.."
carry="$(cd "${1:?usage: gpu_paper_schedule.sh CARRY_DIR OUT_DIR}" && pwd)"
out="${2:?usage: gpu_paper_schedule.sh CARRY_DIR OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
py="${PYTHON:-python3}"
. benchmarks/device_env.sh
device_data_env "$carry"
extra=()
[ "${BF16:-1}" = 1 ] && extra+=(--bf16)
[ -n "${LR_SCHEDULE:-}" ] && extra+=(--lr-schedule "$LR_SCHEDULE")
{
  echo "started $(date -u +%FT%TZ); git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  device_header "$py"
  echo "train_time=${TRAIN_TIME:-420}s steps=${STEPS:-20000} batch=16 ${extra[*]}"
} | tee -a "$out/session.txt"
STEPS="${STEPS:-20000}" BATCH=16 TIME_LIMIT="${TRAIN_TIME:-420}" MODELS=mixed SPLIT=trainval \
  DEVICE="${DEVICE:-cuda}" EPISODES="${EPISODES:-1000}" PYTHON="$py" TRAIN_ARGS="${extra[*]}" \
  bash benchmarks/omniglot_mmnet.sh "$out" 2>&1 | tee -a "$out/session.txt"
echo "finished $(date -u +%FT%TZ)" | tee -a "$out/session.txt"
