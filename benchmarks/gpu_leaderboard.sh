#!/usr/bin/env bash
# The leaderboard of the published recipes at equal compute, for a leased GPU (issue 12):
# every method trains BUDGET seconds per setting on the GPU, validates on the val split and
# is tested with its best-on-val weights; one process, one job at a time (so every method
# has the GPU to itself for its budget), resumable, stopped at DEADLINE with whatever
# finished saved. Packs logs and results (no checkpoints) into OUT_DIR.
#
#   bash benchmarks/gpu_leaderboard.sh CARRY_DIR OUT_DIR
#
# CARRY_DIR holds datasets/omniglot/ (the zips and splits), optionally cache/ (a decoded-data
# cache from ~/.cache/mmnet-plugin, to skip decoding) and whl/ (easyfsl's wheel, learn2learn's
# sdist and its import-time needs gym, gym-notices and qpth: the GPU machine has no package
# index); the same layout as benchmarks/device_session.sh. Environment (defaults):
#   DEVICE (cuda)  PYTHON (python3)  DEADLINE (540 s: the whole script)  DATASET (omniglot)
#   BUDGET (25 s of training per method and setting)  SETTINGS (5w1s,20w1s,5w5s,20w5s)
#   METHODS (mmnet,maml,protonet,matchingnet)  TEST_EPISODES (600)  VAL_POINTS (6)
#   VAL_EPISODES (100)  EXTRA (more run.py options, e.g. "--protonet-train-ways 60")
#   SEED_DIR (an earlier OUT_DIR's leaderboard/ folder to resume from)
# Four settings x four methods x 25 s is 400 s of training, plus validation and testing:
# about one 10-minute command. The settings run in the order given; when the deadline stops
# the run, a second call (SEED_DIR=OUT_DIR/leaderboard) continues where it stopped. On the
# CPU, for a check of the script itself:
#   DEVICE=cpu BUDGET=2 SETTINGS=5w1s TEST_EPISODES=10 VAL_EPISODES=5 VAL_POINTS=2 \
#     bash benchmarks/gpu_leaderboard.sh CARRY_DIR /tmp/gpu-check
set -uo pipefail
cd "$(dirname "$0")/.."
carry="$(cd "${1:?usage: gpu_leaderboard.sh CARRY_DIR OUT_DIR}" && pwd)"
out="${2:?usage: gpu_leaderboard.sh CARRY_DIR OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
device="${DEVICE:-cuda}"
py="${PYTHON:-python3}"
deadline="${DEADLINE:-540}"
. benchmarks/device_env.sh
device_data_env "$carry"
t0=$SECONDS
left() { local l=$(( deadline - (SECONDS - t0) )); echo $(( l > 1 ? l : 1 )); }
log() { echo "[$(( SECONDS - t0 ))s] $*" | tee -a "$out/session.txt"; }

log "device $device; deadline ${deadline}s; git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
device_header "$py" | tee -a "$out/session.txt"

site=/tmp/mmnet-site
if [ -d "$carry/whl" ] && ! "$py" -c "import easyfsl, learn2learn" 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-build-isolation --use-pep517 \
    -C--build-option=build_ext --target "$site" "$carry"/whl/* > "$out/install.txt" 2>&1
  log "extras installed rc=$?"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

work="$out/leaderboard"
if [ -n "${SEED_DIR:-}" ] && [ "$(cd "$SEED_DIR" && pwd)" != "$work" ]; then
  mkdir -p "$work" && cp -r "$SEED_DIR"/. "$work"/
fi
threads=()
[ "$device" = cpu ] && threads=(--threads 1)
# shellcheck disable=SC2086
timeout --signal=INT --kill-after=20 "$(left)" "$py" benchmarks/run.py --dataset "${DATASET:-omniglot}" --device "$device" \
  --methods "${METHODS:-mmnet,maml,protonet,matchingnet}" --settings "${SETTINGS:-5w1s,20w1s,5w5s,20w5s}" \
  --recipe published --budget-seconds "${BUDGET:-25}" --test-episodes "${TEST_EPISODES:-600}" \
  --val-points "${VAL_POINTS:-6}" --val-episodes "${VAL_EPISODES:-100}" --no-progress "${threads[@]}" \
  ${EXTRA:-} --output "$work" > "$out/leaderboard.log" 2>&1
rc=$?
log "leaderboard ended rc=$rc (0: all done; 130 or 124: stopped at the deadline, rerun with SEED_DIR=$work)"
tail -25 "$out/leaderboard.log" | tee -a "$out/session.txt"
tar czf "$out/leaderboard.tgz" --exclude='*.pt' -C "$out" leaderboard
ls -la "$out"
exit $rc
