#!/usr/bin/env bash
# Train, or go on training, the MM-Net shipped as `MMNet.pretrained("omniglot")`.
#
#   bash benchmarks/results/omniglot-pretrained/train.sh RUN_DIR SECONDS
#
# The mixed model (C 2-20, k 1-5) on Omniglot's train split, selected on val (1,000 fixed
# episodes each at 5w1s and 20w1s), with the plateau schedule and the plateau stop rule. The
# first call freezes the code (`git archive` of the current commit, or of COMMIT) into
# RUN_DIR/code and records the commit; every later call resumes from RUN_DIR/ckpt.pt with that
# frozen code, so changes to the work tree cannot break a resume. SECONDS is the time limit of
# this call (the checkpoint is written when it passes; call again to go on).
# Needs MMNET_DATA_ROOT (the folder holding omniglot/) and a Python with the package's
# dependencies (PYTHON, default python).
set -euo pipefail
run="${1:?usage: train.sh RUN_DIR SECONDS}"
limit="${2:?usage: train.sh RUN_DIR SECONDS}"
python="${PYTHON:-python}"
repo="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
mkdir -p "$run"
run="$(cd "$run" && pwd)"
if [ ! -d "$run/code" ]; then
  commit="${COMMIT:-$(git -C "$repo" rev-parse HEAD)}"
  rm -rf "$run/code.tmp"
  mkdir -p "$run/code.tmp"
  git -C "$repo" archive "$commit" mmnet_plugin | tar -x -C "$run/code.tmp"
  mv "$run/code.tmp" "$run/code"
  echo "$commit" > "$run/COMMIT"
fi
cd "$run"
PYTHONPATH="$run/code" "$python" -m mmnet_plugin train \
  --dataset omniglot --split train --ways 2-20 --shots 1-5 --queries "${QUERIES:-5}" \
  --batch-episodes "${BATCH:-4}" --steps 1000000 --lr 1e-3 --lr-schedule plateau --lr-patience 4 \
  --val-every "${VAL_EVERY:-2000}" --val-settings 5w1s,20w1s --val-episodes 1000 --stop-on-plateau \
  --seed 0 --checkpoint ckpt.pt --checkpoint-every 500 --log log.jsonl --time-limit "$limit" --resume \
  --no-progress ${TRAIN_ARGS:-}
