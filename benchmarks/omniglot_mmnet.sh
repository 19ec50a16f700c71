#!/usr/bin/env bash
# MM-Net on real Omniglot (Vinyals split): one mixed-strategy model (C in 2..20, k in 1..5)
# and uniform models, each tested on 5-way and 20-way, 1 and 5 shots, 1,000 test episodes
# with 15 queries per class. Resumable: rerun the same command and finished training
# (checkpoints) is continued, not redone; every evaluation line is appended to results.txt.
#
#   STEPS=2000 BATCH=16 DEVICE=cpu bash benchmarks/omniglot_mmnet.sh [OUT_DIR]
#
# Environment (all optional):
#   STEPS       optimisation steps per model (default 2000)
#   BATCH       episodes per step (default 16, the paper's)
#   TIME_LIMIT  seconds of training per model and call (default 0: none); a model stopped by
#               it is evaluated at the step it reached (the results line says which), and a
#               rerun continues it towards STEPS. For leased machines with a hard deadline.
#   MODELS      which models, in order (default "mixed 5w1s 5w5s 20w1s 20w5s"; a setting
#               means the uniform model of that setting)
#   EPISODES    test episodes per setting (default 1000)
#   SPLIT       training split (default trainval, as the paper's final numbers)
#   DEVICE      auto, cpu, cuda (default auto)
#   PYTHON      the interpreter (default python, else python3); MMNET the command
#               (default "$PYTHON -m mmnet_plugin")
#   TRAIN_ARGS  more options for every `mmnet train` (e.g. "--bf16 --lr-schedule cosine")
#
# Budget = steps reached x BATCH training episodes per model; report the figures as
# "budget X", never as the paper's (the paper states no total number of iterations).
set -euo pipefail
out="${1:-runs/omniglot-mmnet}"
steps="${STEPS:-2000}"
batch="${BATCH:-16}"
time_limit="${TIME_LIMIT:-0}"
models="${MODELS:-mixed 5w1s 5w5s 20w1s 20w5s}"
device="${DEVICE:-auto}"
episodes="${EPISODES:-1000}"
split="${SPLIT:-trainval}"
root="${MMNET_DATA_ROOT:-../shared/datasets}"
py="${PYTHON:-$(command -v python || command -v python3)}"
mmnet="${MMNET:-$py -m mmnet_plugin}"
mkdir -p "$out"
common=(--dataset omniglot --data-root "$root" --device "$device" --seed 0 --no-progress)

reached() {  # name -> optimisation steps in the checkpoint's log
  "$py" - "$out/$1.jsonl" <<'EOF'
import json, sys
steps = [json.loads(l).get("step", 0) for l in open(sys.argv[1]) if l.strip()]
print(max(steps) if steps else 0)
EOF
}

train() {  # name ways shots
  $mmnet train "${common[@]}" --split "$split" --ways "$2" --shots "$3" --steps "$steps" \
    --batch-episodes "$batch" --time-limit "$time_limit" --checkpoint "$out/$1.pt" --resume \
    --log "$out/$1.jsonl" ${TRAIN_ARGS:-} | tee -a "$out/train.txt"
}

test_all() {  # name settings...
  local name="$1"; shift
  local done_steps; done_steps="$(reached "$name")"
  for s in "$@"; do
    w="${s%w*}"; k="${s#*w}"; k="${k%s}"
    tag="$name steps=${done_steps}x${batch} omniglot test ${w}-way ${k}-shot:"
    if grep -qF "$tag" "$out/results.txt" 2>/dev/null; then continue; fi  # done in an earlier run
    line="$($mmnet evaluate "${common[@]}" --checkpoint "$out/$name.pt" --ways "$w" --shots "$k" \
      --episodes "$episodes" --batch-episodes 50)"
    echo "$name steps=${done_steps}x${batch} $line" | tee -a "$out/results.txt"
  done
}

for m in $models; do
  if [ "$m" = mixed ]; then
    train mixed 2-20 1-5
    test_all mixed 5w1s 5w5s 20w1s 20w5s
  else
    w="${m%w*}"; k="${m#*w}"; k="${k%s}"
    train "uniform-$m" "$w" "$k"
    test_all "uniform-$m" "$m"
  fi
done
