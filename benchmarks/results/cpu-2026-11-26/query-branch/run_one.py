"""One model of the 'query branch' question at a longer budget (5-way 1-shot), via the analysis' own trainer.

Usage: PYTHONPATH=. python run_one.py {full|noqb} STEPS [OUTPUT]  (OUTPUT default runs/query-branch;
the run recorded here used /work/runs/qb/out; data from $MMNET_DATA_ROOT or ../shared/datasets)
"""
import os
import sys
from benchmarks import analysis
from mmnet_plugin.runtime import tune_cpu_allocator
import torch
tune_cpu_allocator()
torch.set_num_threads(1)
variant = sys.argv[1]
args = analysis.build_parser().parse_args(["--dataset", "omniglot", "--data-root", os.environ.get("MMNET_DATA_ROOT", "../shared/datasets"), "--device", "cpu",
    "--steps", sys.argv[2], "--batch-episodes", "16", "--queries", "15", "--test-episodes", "300",
    "--ablation-setting", "5w1s", "--output", sys.argv[3] if len(sys.argv) > 3 else "runs/query-branch"])
a = analysis.Analysis(args)
over = {} if variant == "full" else {"use_query_branch": False}
tm = a.train(f"components: {variant}", "mmnet", 5, 1, [(5, 1)], a.mmnet_options(**over))
print(variant, tm.record["tests"]["5w1s"], tm.record["train_seconds"], flush=True)
