"""The device record of a results file names what decides CPU numerics."""

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

from mmnet_plugin.bench.common import device_description  # noqa: E402


def test_cpu_record_names_the_instruction_set_and_its_cap(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    info = device_description(torch.device("cpu"))
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX512 or AVX2
    assert info["onednn_max_cpu_isa"] is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert device_description(torch.device("cpu"))["onednn_max_cpu_isa"] == "AVX2"
