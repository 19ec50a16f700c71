"""One model of the query-branch question at a longer budget (5-way 1-shot, 900 steps x 16),
through the analysis' own trainer: tested on the val split (where the choice is made), then on
the test split (reported; the same test episodes as the 2026-11-26 query-branch run).

Usage: PYTHONPATH=. python run_one.py {residual|none|paper} STEPS [OUTPUT]
(OUTPUT default runs/query-branch-val; data from $MMNET_DATA_ROOT or ../shared/datasets)
"""
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from benchmarks import analysis
from mmnet_plugin.runtime import tune_cpu_allocator

tune_cpu_allocator()
torch.set_num_threads(1)
variant, steps = sys.argv[1], sys.argv[2]
out = Path(sys.argv[3] if len(sys.argv) > 3 else "runs/query-branch-val")
over = {"residual": {}, "none": {"use_query_branch": False}, "paper": {"query_branch": "paper"}}[variant]
result = {"variant": variant, "overrides": over}
for split in ("val", "test"):
    folder = out / split
    if split == "test" and (out / "val" / "models").is_dir():   # reuse the model trained above
        shutil.copytree(out / "val" / "models", folder / "models", dirs_exist_ok=True)
    args = analysis.build_parser().parse_args([
        "--dataset", "omniglot", "--data-root", os.environ.get("MMNET_DATA_ROOT", "../shared/datasets"),
        "--device", "cpu", "--steps", steps, "--batch-episodes", "16", "--queries", "15",
        "--test-episodes", "300", "--ablation-setting", "5w1s", "--eval-split", split, "--output", str(folder)])
    a = analysis.Analysis(args)
    tm = a.train(f"query branch: {variant}", "mmnet", 5, 1, [(5, 1)], a.mmnet_options(**over))
    result[split] = tm.record["tests"]["5w1s"]
    result["train_seconds"] = tm.record["train_seconds"]
    gate = getattr(tm.model, "query_gate", None)
    if gate is not None:
        result["gate_abs_mean"] = float(gate.detach().abs().mean())
print(json.dumps(result), flush=True)
