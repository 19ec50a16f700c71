#!/bin/bash
# fp32 vs bf16 MM-Net training on Omniglot 5w1s, CPU, one thread; then val accuracy.
# Run from anywhere: bash benchmarks/results/cpu-2026-12-03/measurements/bf16.sh (output: bf16.out)
set -e
cd "$(dirname "$0")/../../../.."
mkdir -p "${OUT:-runs/bf16}"
export MMNET_DATA_ROOT=${MMNET_DATA_ROOT:-../shared/datasets} OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for mode in fp32 bf16; do
  extra=""; [ "$mode" = bf16 ] && extra="--bf16"
  rm -f ${OUT:-runs/bf16}/$mode.pt ${OUT:-runs/bf16}/$mode.best.pt ${OUT:-runs/bf16}/$mode.jsonl
  /usr/bin/time -f "$mode train wall %e s" .venv/bin/python -m mmnet_plugin train --dataset omniglot --split train \
    --ways 5 --shots 1 --steps 150 --batch-episodes 8 --seed 0 --device cpu $extra \
    --checkpoint ${OUT:-runs/bf16}/$mode.pt --log ${OUT:-runs/bf16}/$mode.jsonl --no-progress
  /usr/bin/time -f "$mode eval wall %e s" .venv/bin/python -m mmnet_plugin evaluate --dataset omniglot --split val \
    --ways 5 --shots 1 --episodes 300 --seed 0 --device cpu --checkpoint ${OUT:-runs/bf16}/$mode.pt --no-progress
done
