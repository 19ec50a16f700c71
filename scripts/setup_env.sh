#!/usr/bin/env bash
# Set up a virtual environment with mmnet-plugin and all three frameworks
# (learn2learn, torchmeta, easyfsl) on Python 3.11+. Idempotent: rerunning it is cheap.
#   bash scripts/setup_env.sh [VENV_DIR]   (default .venv)
# On a machine without an NVIDIA GPU, torch is taken from PyTorch's CPU index when it can be
# reached (about 0.2 GB instead of the 6 GB CUDA build that PyPI serves for Linux); set
# MMNET_TORCH_INDEX to another index, or to "default" to take torch from pip's usual index.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$here/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip >/dev/null
has() { "$venv/bin/python" -c "import importlib.metadata as m; m.version('$1')" >/dev/null 2>&1; }
# torch first, so that the package's `torch>=2.1` is already met by the build chosen here.
if ! has torch; then
  index="${MMNET_TORCH_INDEX:-}"
  asked="$index"
  if [ -z "$index" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; then
      index=default
    else
      index=https://download.pytorch.org/whl/cpu
      asked=$index
    fi
  fi
  if [ "$index" != default ] && ! "$venv/bin/python" - "$index" <<'PY'
import sys, urllib.request
try:  # does the index answer? (a machine without internet: no, and pip would retry per package)
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=15).close()
except Exception as exc:
    print(f"{sys.argv[1]} does not answer ({type(exc).__name__}): taking torch from pip's usual index", file=sys.stderr)
    sys.exit(1)
PY
  then
    index=default
  fi
  if [ "$index" = default ]; then
    pip install -q torch torchvision
  else
    # An extra index: its +cpu builds rank above PyPI's builds of the same version.
    pip install -q --extra-index-url "$index" torch torchvision
  fi
  "$venv/bin/python" - "$asked" <<'PY'
import sys, torch
build = "CUDA " + torch.version.cuda if torch.version.cuda else "CPU"
asked = sys.argv[1] not in ("", "default")
note = f" ({sys.argv[1]} gave none; MMNET_TORCH_INDEX names another index)" if asked and build != "CPU" else ""
print(f"torch {torch.__version__}: the {build} build{note}")
PY
fi
# The package with its plain extras (easyfsl installs normally).
pip install -q -e "$here[bench,easyfsl,test]"
# learn2learn 0.2.0: its shipped C files predate Python 3.11, so build them from source.
if ! has learn2learn; then
  pip install -q cython setuptools wheel numpy
  pip install -q --no-build-isolation --use-pep517 -C--build-option=build_ext learn2learn==0.2.0
  # learn2learn pulls qpth, which pins numpy<2 and so breaks pandas 3 (and easyfsl with it);
  # learn2learn itself runs on numpy 2.
  pip install -q "numpy>=2"
fi
# torchmeta 1.8.0 pins torch<1.10: install it without its pins, plus what it really needs;
# mmnet_plugin.integrations.torchmeta.patch_torchmeta() makes it work on current torch.
if ! has torchmeta; then
  pip install -q h5py ordered-set requests tqdm
  pip install -q --no-deps torchmeta==1.8.0
fi
echo "environment ready: $venv"
