"""The harness ships in the wheel (``mmnet_plugin.bench``): a real wheel is built from the
package's files and installed into a temporary folder, and run from there, outside any
checkout. Also: ``mmnet bench`` and ``python -m mmnet_plugin bench``, the light core import,
and the code identity in a checkout and installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mmnet_plugin
from mmnet_plugin.bench.identity import checkout_root, code_identity, source_digest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(mmnet_plugin.__file__).resolve().parent


def _python(args, cwd, pythonpath=None, timeout=120):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, *args], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    """A wheel built from the package's sources (setup.cfg, pyproject.toml, README, LICENSE and
    mmnet_plugin/, copied without caches), unpacked as a site folder."""
    if not (ROOT / "setup.cfg").is_file():
        pytest.skip("no setup.cfg: not run from a checkout")
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mmnet_plugin", src / "mmnet_plugin", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (whl,) = dist.glob("mmnet_plugin-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        zf.extractall(site)
    return site, names, src


def test_the_wheel_holds_the_harness_its_methods_configs_and_analysis(wheel_site):
    _, names, _ = wheel_site
    for name in (
        "mmnet_plugin/bench/__init__.py",
        "mmnet_plugin/bench/cli.py",
        "mmnet_plugin/bench/grid.py",
        "mmnet_plugin/bench/methods/base.py",
        "mmnet_plugin/bench/methods/maml.py",
        "mmnet_plugin/bench/analysis/core.py",
        "mmnet_plugin/bench/speed.py",
        "mmnet_plugin/bench/configs/omniglot.yaml",
        "mmnet_plugin/bench/configs/cpu-leaderboard.yaml",
        "mmnet_plugin/bench/configs/glyphs-smoke.yaml",
    ):
        assert name in names, name
    assert not any(n.startswith("benchmarks/") for n in names)  # the checkout's wrappers stay out


def test_the_installed_harness_runs_outside_a_checkout(wheel_site, tmp_path):
    site, _, src = wheel_site
    res = _python(["-m", "mmnet_plugin", "bench", "--help"], cwd=tmp_path, pythonpath=site)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("usage: mmnet bench") and "--config" in res.stdout and "--tensorboard" in res.stdout
    probe = (
        "import json, mmnet_plugin; from mmnet_plugin.bench.identity import code_identity; "
        "from mmnet_plugin.bench.config import resolve_config_path; "
        "print(json.dumps({'file': mmnet_plugin.__file__, 'code': code_identity(), "
        "'config': str(resolve_config_path('glyphs-smoke'))}))"
    )
    res = _python(["-c", probe], cwd=tmp_path, pythonpath=site)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["file"].startswith(str(site))  # the installed copy ran, not the checkout
    code = out["code"]
    assert code["source"] == "installed" and code["commit"] is None and code["dirty"] is None
    assert code["uncommitted_source_files"] is None
    # the installed package digests its own files: the same files give the checkout's digest
    assert code["source_sha256"] == source_digest(src / "mmnet_plugin")
    assert out["config"].startswith(str(site)) and out["config"].endswith("glyphs-smoke.yaml")


def test_the_digest_of_an_installed_package_follows_its_code(wheel_site, tmp_path):
    site, _, _ = wheel_site
    pkg = tmp_path / "mmnet_plugin"
    shutil.copytree(site / "mmnet_plugin", pkg)
    before = code_identity(pkg)
    assert before["source"] == "installed" and before["commit"] is None and checkout_root(pkg) is None
    with open(pkg / "bench" / "train.py", "a") as fh:
        fh.write("\n# changed\n")
    after = code_identity(pkg)
    assert after["source_sha256"] != before["source_sha256"]  # so the resume keys retire old records
    (pkg / "bench" / "__pycache__").mkdir(exist_ok=True)
    (pkg / "bench" / "__pycache__" / "x.py").write_text("cache")
    assert code_identity(pkg)["source_sha256"] == after["source_sha256"]


def test_in_a_checkout_the_git_commit_is_recorded():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    code = code_identity(ROOT / "mmnet_plugin")
    assert code["source"] == "checkout" and checkout_root(ROOT / "mmnet_plugin") == ROOT
    assert re.fullmatch(r"[0-9a-f]{40}", code["commit"] or "") and isinstance(code["dirty"], bool)
    assert isinstance(code["uncommitted_source_files"], list)
    assert code["source_sha256"] == source_digest(ROOT / "mmnet_plugin")


def test_mmnet_bench_and_the_module_form_give_the_harness(tmp_path):
    res = _python(["-m", "mmnet_plugin", "bench", "--help"], cwd=tmp_path, pythonpath=PACKAGE.parent)
    assert res.returncode == 0 and res.stdout.startswith("usage: mmnet bench"), res.stderr[-2000:]
    exe = shutil.which("mmnet", path=str(Path(sys.executable).parent))
    if exe is not None:  # the console script of the installed package
        res = subprocess.run([exe, "bench", "--help"], cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "--methods" in res.stdout and "--config" in res.stdout
    if (ROOT / "benchmarks" / "run.py").is_file():  # the checkout's wrapper: the same options
        res = _python([str(ROOT / "benchmarks" / "run.py"), "--help"], cwd=tmp_path)
        assert res.returncode == 0 and res.stdout.startswith("usage: benchmarks/run.py")
        assert "--tensorboard" in res.stdout and "--config" in res.stdout


def test_the_core_import_stays_light(tmp_path):
    probe = (
        "import sys, mmnet_plugin; a = 'mmnet_plugin.bench' in sys.modules; "
        "import mmnet_plugin.bench.cli, mmnet_plugin.bench.analysis, mmnet_plugin.bench.speed; "
        "heavy = [m for m in ('matplotlib', 'sklearn', 'yaml', 'tensorboard', 'learn2learn', 'easyfsl') "
        "if m in sys.modules]; print(a, heavy)"
    )
    res = _python(["-c", probe], cwd=tmp_path, pythonpath=PACKAGE.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False []"
