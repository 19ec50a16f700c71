#!/usr/bin/env bash
# MM-Net on real Omniglot (Vinyals split): one mixed-strategy model (C in 2..20, k in 1..5)
# and uniform models, each tested on 5-way and 20-way, 1 and 5 shots, 1,000 test episodes
# with 15 queries per class. Resumable: rerun the same command and finished training
# (checkpoints) is continued, not redone; every evaluation line is appended to results.txt.
#
#   STEPS=2000 BATCH=16 DEVICE=cpu bash benchmarks/omniglot_mmnet.sh [OUT_DIR]
#
# Budget = STEPS x BATCH training episodes per model; the figures are "budget X", never the
# paper's (the paper states no total number of iterations).
set -euo pipefail
out="${1:-runs/omniglot-mmnet}"
steps="${STEPS:-2000}"
batch="${BATCH:-16}"
device="${DEVICE:-auto}"
episodes="${EPISODES:-1000}"
uniform="${UNIFORM:-5w1s 5w5s 20w1s 20w5s}"
split="${SPLIT:-trainval}"
root="${MMNET_DATA_ROOT:-../shared/datasets}"
mmnet="${MMNET:-python -m mmnet_plugin}"
mkdir -p "$out"
common=(--dataset omniglot --data-root "$root" --device "$device" --seed 0 --no-progress)

train() {  # name ways shots
  $mmnet train "${common[@]}" --split "$split" --ways "$2" --shots "$3" --steps "$steps" \
    --batch-episodes "$batch" --checkpoint "$out/$1.pt" --resume --log "$out/$1.jsonl"
}
test_all() {  # name settings...
  local name="$1"; shift
  for s in "$@"; do
    w="${s%w*}"; k="${s#*w}"; k="${k%s}"
    tag="$name budget=${steps}x${batch} omniglot test ${w}-way ${k}-shot:"
    if grep -qF "$tag" "$out/results.txt" 2>/dev/null; then continue; fi  # done in an earlier run
    line="$($mmnet evaluate "${common[@]}" --checkpoint "$out/$name.pt" --ways "$w" --shots "$k" --episodes "$episodes")"
    echo "$name budget=${steps}x${batch} $line" | tee -a "$out/results.txt"
  done
}

train mixed 2-20 1-5
test_all mixed 5w1s 5w5s 20w1s 20w5s
for s in $uniform; do
  w="${s%w*}"; k="${s#*w}"; k="${k%s}"
  train "uniform-$s" "$w" "$k"
  test_all "uniform-$s" "$s"
done
