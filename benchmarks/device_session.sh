#!/usr/bin/env bash
# Everything one short GPU lease runs on real Omniglot, as concurrent jobs under one deadline:
#
#   A. the MM-Net table (benchmarks/omniglot_mmnet.sh): the mixed-strategy model first, then
#      uniform models, each trained for at most its TIME_LIMIT and tested on 1,000 episodes;
#   B. the leaderboard (benchmarks/run.py): all methods, 5w1s,5w5s,20w1s,20w5s, same episodes,
#      published recipes, validated on the val split (an episode budget, since the jobs share
#      the GPU; the equal-compute table is benchmarks/gpu_leaderboard.sh, run alone);
#   C. the analysis (benchmarks/analysis.py): one part after another, each part's report kept;
#   D. then, alone on the GPU, benchmarks/speed.py (at most SPEED_TIME seconds, default 90).
#
# The GPU runs small, launch-bound kernels for all of these, so running them side by side
# uses one lease far better than one after another. Every job is resumable and stopped at the
# deadline by `timeout`; whatever finished is packed into OUT_DIR (logs, results, reports;
# no checkpoints).
#
#   bash benchmarks/device_session.sh CARRY_DIR OUT_DIR
#
# CARRY_DIR holds datasets/omniglot/ (the zips and splits), optionally cache/ (a decoded-data
# cache, to skip decoding) and whl/ (easyfsl's wheel, learn2learn's sdist and its import-time
# needs gym, gym-notices and qpth: the GPU machine has no package index). Environment:
#   DEADLINE (s, default 400)   DEVICE (default cuda)   PYTHON (default python3)
#   MIXED_TIME, UNIFORM_TIME    training seconds of the mixed / each uniform model (210 / 100)
#   STEPS                       step cap of every MM-Net model (default 20000)
#   BENCH_EPISODES              harness training episodes per method and setting (default 2000)
#   ANALYSIS_STEPS              analysis steps per model (default 300)
#   TEST_EPISODES               harness and analysis test episodes (default 500 / 300)
#   JOBS                        which of A B C D to run (default all)
#   ANALYSIS_GROUPS             analysis parts, ";" between concurrent chains
#                               (default "ablations strategy dr similarity tsne": one chain)
#   SEED_DIR                    an earlier session's work folder to resume from
set -uo pipefail
cd "$(dirname "$0")/.."
carry="$(cd "${1:?usage: device_session.sh CARRY_DIR OUT_DIR}" && pwd)"
out="${2:?usage: device_session.sh CARRY_DIR OUT_DIR}"
deadline="${DEADLINE:-400}"
device="${DEVICE:-cuda}"
py="${PYTHON:-python3}"
bench_episodes="${BENCH_EPISODES:-2000}"
analysis_steps="${ANALYSIS_STEPS:-300}"
work="${WORK:-/tmp/device-runs}"
mkdir -p "$work" "$out"
. benchmarks/device_env.sh
device_data_env "$carry"
export OMP_NUM_THREADS=2 PYTHON="$py"
jobs="${JOBS:-A B C D}"
want() { [[ " $jobs " == *" $1 "* ]]; }
# SEED_DIR: the work folder of an earlier session (e.g. an unpacked device-runs.tgz); its
# results are copied in first, so the resumable jobs skip what that session finished.
if [ -n "${SEED_DIR:-}" ]; then cp -r "$SEED_DIR"/. "$work"/; fi
t0=$SECONDS
left() { local l=$(( deadline - (SECONDS - t0) )); echo $(( l > 1 ? l : 1 )); }
log() { echo "[$(( SECONDS - t0 ))s] $*" | tee -a "$work/session.txt"; }

log "device $device; deadline ${deadline}s; git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
device_header "$py" | tee -a "$work/session.txt"
"$py" -c "from mmnet_plugin.data import load_dataset as l; [l('omniglot', split=s) for s in ('trainval', 'train', 'test')]" \
  || { log "cannot load Omniglot from $MMNET_DATA_ROOT"; exit 2; }
log "data ready"

site=/tmp/mmnet-site
( if [ -d "$carry/whl" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-build-isolation --use-pep517 \
      -C--build-option=build_ext --target "$site" "$carry"/whl/* > "$work/install.txt" 2>&1
    echo "install rc=$?" >> "$work/install.txt"
  fi ) &
install=$!

# A. the MM-Net table, in three chains (mixed first)
chain() {  # models time_limit tag
  STEPS="${STEPS:-20000}" TIME_LIMIT="$2" MODELS="$1" DEVICE="$device" \
    timeout "$(left)" bash benchmarks/omniglot_mmnet.sh "$work/mmnet" > "$work/mmnet-$3.log" 2>&1
  log "A[$3] $1 ended rc=$?"
}
if want A; then
  chain "mixed" "${MIXED_TIME:-210}" mixed &
  chain "5w1s 5w5s" "${UNIFORM_TIME:-100}" 5way &
  chain "20w1s 20w5s" "${UNIFORM_TIME:-100}" 20way &
fi

# C. the analysis: each group of parts (";"-separated) is one chain with its own output folder
#    (analysis-<first part>); parts within a chain reuse each other's models.
IFS=';' read -ra groups <<< "${ANALYSIS_GROUPS:-ablations strategy dr similarity tsne}"
for group in "${groups[@]}"; do
  [ -n "${group// /}" ] || continue
  want C || continue
  set -- $group
  ( for part in "$@"; do
      PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" timeout "$(left)" "$py" -m benchmarks.analysis --dataset omniglot \
        --device "$device" --steps "$analysis_steps" --batch-episodes 16 --queries 15 \
        --test-episodes "${TEST_EPISODES:-300}" --parts "$part" --output "$work/analysis-$1" >> "$work/analysis-$1.log" 2>&1
      log "C analysis $part ended rc=$?"
    done ) &
done

# B. the leaderboard, once the optional libraries are installed
wait "$install"
log "extras installed: $(tail -1 "$work/install.txt" 2>/dev/null)"
if want B; then
  PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" timeout "$(left)" "$py" benchmarks/run.py --dataset omniglot \
  --device "$device" --methods mmnet-mixed,mmnet,protonet,matchingnet,maml \
  --settings 5w1s,5w5s,20w1s,20w5s --train-split train --recipe published --train-episodes "$bench_episodes" \
  --val-points 5 --val-episodes 100 \
  --test-episodes "${TEST_EPISODES:-500}" --no-progress --output "$work/leaderboard" > "$work/leaderboard.log" 2>&1
  log "B leaderboard ended rc=$?"
fi

wait
log "all jobs ended"
# D. speed on the now idle GPU (all methods on the same episodes, interleaved; MM-Net profile)
if want D; then
  PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" timeout "${SPEED_TIME:-90}" "$py" benchmarks/speed.py --device "$device" \
  --rounds 5 --profile --json "$work/speed.json" > "$work/speed.txt" 2>&1
  log "D speed ended rc=$?"
fi
cp "$work/speed.txt" "$out/" 2>/dev/null
cp "$work/session.txt" "$out/" 2>/dev/null
cp "$work/mmnet/results.txt" "$out/mmnet-results.txt" 2>/dev/null
cp "$work/leaderboard/leaderboard.md" "$out/" 2>/dev/null
for r in "$work"/analysis-*/report.md; do [ -f "$r" ] && cp "$r" "$out/$(basename "$(dirname "$r")")-report.md"; done
tar czf "$out/device-runs.tgz" --exclude='*.pt' -C "$(dirname "$work")" "$(basename "$work")"
ls -la "$out"
