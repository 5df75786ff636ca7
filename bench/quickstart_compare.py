"""Downstream from SM3 vs the same downstream model from random initialisation.

Runs the quick-start pipeline's downstream config, per setting and seed, twice with the same
epochs and labels: once from the SM3 stage-2 checkpoint, once with ``init_from: null``; tests
both on the test split (checkpoints chosen on validation) and compares the mean per-head macro
AUC. Runs the two pretraining stages first when their checkpoints are missing. Prints a table,
writes JSON.

    python bench/quickstart_compare.py --seeds 0 1 2 --settings projector finetune
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path

from json_out import write_json  # bench/json_out.py (the script's folder is on sys.path)

CONFIGS = Path("configs/quickstart")
RUNS = Path("runs/quickstart")


def skinssl(*args: str) -> float:
    """Run the CLI; return its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(["skinssl", *args, "--trainer.enable_progress_bar=false"], check=True)
    return time.perf_counter() - start


def finetune_and_test(version: str, seed: int, setting: str, init_from: str | None) -> dict:
    extra = [
        f"--trainer.logger.init_args.version={version}",
        f"--seed_everything={seed}",
        f"--model.init_args.setting={setting}",
    ]
    if init_from is None:
        extra.append("--model.init_args.init_from=null")
    config = str(CONFIGS / "finetune.yaml")
    shutil.rmtree(RUNS / version, ignore_errors=True)  # measured afresh (fit refuses old runs)
    fit_s = skinssl("fit", "-c", config, *extra)
    ckpt = RUNS / version / "checkpoints" / "best.ckpt"
    skinssl("test", "-c", config, *extra, f"--ckpt_path={ckpt}")
    metrics = json.loads((RUNS / version / "metrics.json").read_text())  # the test report
    return {
        "auc_mean": metrics["summary"]["mean_auc_macro_heads"]["value"],
        "accuracy_mean": metrics["summary"]["mean_accuracy_heads"]["value"],
        "auc_per_head": {h: r["auc_macro"] for h, r in metrics["heads"].items()},
        "fit_seconds": fit_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="+", default=["projector", "finetune"])
    parser.add_argument("--out", default="bench/results/quickstart_compare.json")
    args = parser.parse_args()

    for stage in ("stage1", "stage2"):
        if not (RUNS / stage / "checkpoints" / "last.ckpt").is_file():
            skinssl("fit", "-c", str(CONFIGS / f"{stage}.yaml"))
    stage2 = str(RUNS / "stage2" / "checkpoints" / "last.ckpt")
    results: dict[str, list[dict]] = {}
    for setting in args.settings:
        for init, path in (("sm3", stage2), ("random_init", None)):
            results[f"{setting}/{init}"] = [
                finetune_and_test(f"compare-{setting}-{init}-{seed}", seed, setting, path)
                for seed in args.seeds
            ]

    heads = list(next(iter(results.values()))[0]["auc_per_head"])
    print("\n| setting/init | mean macro AUC | mean accuracy | " + " | ".join(heads) + " |")
    print("|---|---|---|" + "---|" * len(heads))
    summary = {}
    for name, runs in results.items():
        aucs = [r["auc_mean"] for r in runs]
        accs = [r["accuracy_mean"] for r in runs]
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        summary[name] = {"auc_mean": statistics.mean(aucs), "auc_std": sd}
        per_head = [statistics.mean(r["auc_per_head"][h] for r in runs) for h in heads]
        print(
            f"| {name} | {100 * statistics.mean(aucs):.1f} ± {100 * sd:.1f} "
            f"| {100 * statistics.mean(accs):.1f} | "
            + " | ".join(f"{100 * v:.1f}" for v in per_head)
            + " |"
        )
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "seeds": args.seeds,
    }
    write_json(args.out, {"meta": meta, "summary": summary, "runs": results})


if __name__ == "__main__":
    main()
