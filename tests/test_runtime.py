import importlib
import platform

import pytest

import mmnet_plugin.runtime as runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh(monkeypatch):
    """The module with no tuning recorded yet (the process-level setting itself is harmless)."""
    monkeypatch.setattr(runtime, "_state", None)
    return runtime


def test_nothing_is_tuned_on_import():
    mod = importlib.reload(runtime)
    assert mod.cpu_allocator_state() == "default"


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
