import platform
import subprocess
import sys
from pathlib import Path

import pytest

import mmnet_plugin.runtime as runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh(monkeypatch):
    """The module with no tuning recorded yet (the process-level setting itself is harmless)."""
    monkeypatch.setattr(runtime, "_state", None)
    return runtime


def test_nothing_is_tuned_on_import():
    # a fresh interpreter: importing the library (model, trainer, evaluator) tunes nothing
    code = (
        "import mmnet_plugin as m; m.MMNet; m.Trainer; m.evaluate; "
        "from mmnet_plugin.runtime import cpu_allocator_state; print(cpu_allocator_state())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert out.stdout.strip() == "default"


def test_opt_out_by_environment(fresh, monkeypatch):
    monkeypatch.setenv("MMNET_CPU_ALLOCATOR", "default")
    assert fresh.tune_cpu_allocator() is False
    assert "MMNET_CPU_ALLOCATOR=default" in fresh.cpu_allocator_state()


@pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc on Linux only")
def test_tuning_applies_on_glibc_and_is_idempotent(fresh, monkeypatch):
    monkeypatch.delenv("MMNET_CPU_ALLOCATOR", raising=False)
    assert fresh.tune_cpu_allocator() is True
    assert fresh.cpu_allocator_state().startswith("glibc")
    assert fresh.tune_cpu_allocator() is True  # second call: no change, same answer


def test_other_platforms_are_left_alone(fresh, monkeypatch):
    monkeypatch.delenv("MMNET_CPU_ALLOCATOR", raising=False)
    monkeypatch.setattr(runtime.platform, "system", lambda: "Darwin")
    assert fresh.tune_cpu_allocator() is False
    assert fresh.cpu_allocator_state() == "default (not glibc)"


@pytest.mark.parametrize("preset", [None, "256"])
def test_onednn_primitive_cache_is_bounded_unless_set(fresh, monkeypatch, preset):
    """Mixed batches change the convolution shapes every step: the kernel cache is capped at 64
    (a value the user set is kept) and the setting is stated in the allocator record."""
    if preset is None:
        monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", preset)
    monkeypatch.delenv("MMNET_CPU_ALLOCATOR", raising=False)
    fresh.tune_cpu_allocator()
    import os

    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == (preset or "64")
    if GLIBC:
        assert fresh.cpu_allocator_state().endswith(f"oneDNN cache {preset or '64'}")
