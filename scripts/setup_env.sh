#!/usr/bin/env bash
# Set up a virtual environment with mmnet-plugin and all three frameworks
# (learn2learn, torchmeta, easyfsl) on Python 3.11+. Idempotent: rerunning it is cheap.
#   bash scripts/setup_env.sh [VENV_DIR]   (default .venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$here/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip >/dev/null
# The package with its plain extras (easyfsl installs normally).
pip install -q -e "$here[bench,easyfsl,test]"
# learn2learn 0.2.0: its shipped C files predate Python 3.11, so build them from source.
if ! "$venv/bin/python" -c "import importlib.metadata as m; m.version('learn2learn')" >/dev/null 2>&1; then
  pip install -q cython setuptools wheel numpy
  pip install -q --no-build-isolation --use-pep517 -C--build-option=build_ext learn2learn==0.2.0
  # learn2learn pulls qpth, which pins numpy<2 and so breaks pandas 3 (and easyfsl with it);
  # learn2learn itself runs on numpy 2.
  pip install -q "numpy>=2"
fi
# torchmeta 1.8.0 pins torch<1.10: install it without its pins, plus what it really needs;
# mmnet_plugin.integrations.torchmeta.patch_torchmeta() makes it work on current torch.
if ! "$venv/bin/python" -c "import importlib.metadata as m; m.version('torchmeta')" >/dev/null 2>&1; then
  pip install -q h5py ordered-set requests tqdm
  pip install -q --no-deps torchmeta==1.8.0
fi
echo "environment ready: $venv"
