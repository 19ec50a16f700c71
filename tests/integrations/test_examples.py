"""The framework examples, run as a user would: a script in an empty folder, the installed
package, Omniglot from ``MMNET_DATA_ROOT``; plus the lazy-import promise."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

import pytest

import mmnet_plugin

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def _env(**extra: str) -> Dict[str, str]:
    """The test's environment, with the mmnet_plugin under test importable.

    Installed (tox): nothing to add. Run from a checkout with ``PYTHONPATH``: it is passed
    through; otherwise the checkout is put on ``PYTHONPATH``.
    """
    env = dict(os.environ)
    env.update(extra)
    here = str(Path(mmnet_plugin.__file__).resolve().parents[1])
    installed = {str(Path(p).resolve()) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
    if here not in installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _run(args, cwd: Path, env: Dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_fresh_interpreter(tmp_path):
    """One fresh interpreter (imports are the cost): importing the package imports no
    framework; the torchmeta and easyfsl breakages the compatibility steps fix are real; the
    steps patch only what is missing, and a second call changes nothing."""
    script = textwrap.dedent(
        """
        import sys
        import mmnet_plugin, mmnet_plugin.integrations
        import mmnet_plugin.integrations.learn2learn, mmnet_plugin.integrations.torchmeta
        import mmnet_plugin.integrations.easyfsl
        from mmnet_plugin.integrations.learn2learn import episode_from_learn2learn
        from mmnet_plugin.integrations.torchmeta import episodes_from_torchmeta
        from mmnet_plugin.integrations.easyfsl import episode_from_easyfsl
        print("FILE", mmnet_plugin.__file__)
        print("LOADED", sorted(m for m in ("learn2learn", "torchmeta", "easyfsl") if m in sys.modules))

        # torchmeta: `import torchmeta` fails on torchvision's removed private helpers
        try:
            import torchmeta
            print("TM-IMPORT-OK")
        except ImportError as exc:
            print("TM-IMPORT-FAILS", "_get_confirm_token" in str(exc) or "_save_response_content" in str(exc))
        import torchvision.datasets.utils as tvu
        sentinel = lambda response: "mine"
        tvu._get_confirm_token = sentinel  # present already: the patch must leave it alone
        from torchmeta.utils.data.task import SubsetTask, Task
        try:
            SubsetTask(Task(0, 1), [0])
            print("TM-SUBSET-OK")
        except NotImplementedError:
            print("TM-SUBSET-FAILS")
        from mmnet_plugin.integrations.torchmeta import patch_torchmeta
        print("TM-APPLIED", patch_torchmeta())
        print("TM-KEPT", tvu._get_confirm_token is sentinel)
        print("TM-AGAIN", patch_torchmeta())
        import torchmeta
        SubsetTask(Task(0, 1), [0])
        print("TM-WORKS")

        # easyfsl: TaskSampler passes data_source=None to a Sampler.__init__ that no longer takes it
        from easyfsl.samplers import TaskSampler
        labels = type("D", (), {"get_labels": lambda self: [0, 0, 1, 1]})()
        try:
            TaskSampler(labels, n_way=2, n_shot=1, n_query=1, n_tasks=1)
            print("EF-UNPATCHED-OK")
        except TypeError:
            print("EF-UNPATCHED-FAILS")
        from mmnet_plugin.integrations.easyfsl import MMNet, patch_easyfsl  # MMNet applies it
        print("EF-AGAIN", patch_easyfsl())
        print("EF-PATCHED", len(list(TaskSampler(labels, n_way=2, n_shot=1, n_query=1, n_tasks=3))))
        """
    )
    for name in ("torchmeta", "easyfsl"):
        _need_framework(name)
    out = _run(["-c", script], tmp_path, _env())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    where = next(line for line in lines if line.startswith("FILE ")).split(" ", 1)[1]
    assert Path(where).resolve() == Path(mmnet_plugin.__file__).resolve()  # the package under test
    assert "LOADED []" in lines
    assert "TM-IMPORT-FAILS True" in lines and "TM-SUBSET-FAILS" in lines
    applied = next(line for line in lines if line.startswith("TM-APPLIED"))
    assert "_save_response_content" in applied and "SubsetTask" in applied
    assert "_get_confirm_token" not in applied  # it was present: left alone
    assert "TM-KEPT True" in lines and "TM-AGAIN ()" in lines and "TM-WORKS" in lines
    import torch

    if torch.utils.data.Sampler.__init__ is object.__init__:  # true of the torch this project uses
        assert "EF-UNPATCHED-FAILS" in lines
    assert "EF-AGAIN ()" in lines and "EF-PATCHED 3" in lines


@pytest.fixture(scope="module")
def omniglot_env(omniglot_cache: SimpleNamespace) -> Dict[str, str]:
    """Environment for the examples: the real data root and the session's decoded cache."""
    return _env(MMNET_DATA_ROOT=str(omniglot_cache.root), MMNET_CACHE_DIR=str(omniglot_cache.cache_dir))


@pytest.mark.parametrize(
    "framework, args",
    [
        ("learn2learn", ["--meta-batch", "1"]),
        ("torchmeta", ["--meta-batch", "1"]),
        ("easyfsl", []),
    ],
)
def test_example_runs_with_a_tiny_budget(framework, args, tmp_path, omniglot_env):
    _need_framework(framework)
    script = EXAMPLES / f"{framework}_omniglot.py"
    local = tmp_path / script.name
    shutil.copy(script, local)  # run from an empty folder, away from the checkout
    out = _run(
        [local.name, "--steps", "2", "--episodes", "2", "--queries", "2", "--device", "cpu", *args],
        tmp_path,
        omniglot_env,
    )
    assert out.returncode == 0, f"{framework} example failed:\n{out.stdout}\n{out.stderr}"
    match = re.search(r"test accuracy: (\d+\.\d+)", out.stdout)
    assert match, out.stdout
    assert 0.0 <= float(match.group(1)) <= 100.0
    assert "step 2/2" in out.stdout


def _need_framework(name: str) -> None:
    """Skip without the framework, or fail where the environment must have it."""
    import importlib.metadata

    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        if "1" in (os.environ.get("MMNET_REQUIRE_FRAMEWORKS"), os.environ.get("MMNET_REQUIRE_DATA")):
            pytest.fail(f"{name} is required in this environment but not installed", pytrace=False)
        pytest.skip(f"{name} not installed")
