# Sourced by the scripts for a leased GPU (device_session.sh, gpu_leaderboard.sh,
# gpu_paper_schedule.sh): what each of them sets up the same way.

# device_data_env CARRY_DIR: the carried data and decoded-data cache (../shared does not travel)
device_data_env() {
  export MMNET_DATA_ROOT="$1/datasets" PYTHONUNBUFFERED=1
  export MMNET_CACHE_DIR="${MMNET_CACHE_DIR:-$1/cache}"
}

# device_header PYTHON: the GPU, driver, Python and torch, for the session log
device_header() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$1" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
}
