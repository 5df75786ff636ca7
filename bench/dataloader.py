"""Pairs per second of SM3 pretraining views (2 dermoscopic + 2 clinical views, 224 px).

Compares the decoded-image cache with decoding every JPEG on every access, with one loader
worker and with one per core. Prints a table and writes JSON.

    python bench/dataloader.py                      # synthetic data at Derm7pt's image size
    python bench/dataloader.py --root /data/derm7pt # the real release
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import torch

from skinssl.datamodules import Derm7ptDataModule, SyntheticDerm7ptDataModule, Views
from skinssl.datamodules.base import default_workers


def measure(dm: Derm7ptDataModule, batches: int, warmup: int) -> float:
    """Pairs per second over ``batches`` batches after ``warmup`` (workers started, caches hot)."""
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += len(batch["index"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", help="Derm7pt release folder (default: synthetic data)")
    parser.add_argument("--synthetic-root", default="data/synthetic-512")
    parser.add_argument("--num-cases", type=int, default=1011)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--out", default="bench/results/dataloader.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    common = dict(
        batch_size=args.batch_size,
        image_size=args.image_size,
        cache_size=256,
        derm_views=Views.simclr(),
    )
    cores = default_workers()
    rows = []
    for cache in ("none", "memory"):
        for workers in sorted({1, cores}):
            if args.root:
                dm = Derm7ptDataModule(root=args.root, cache=cache, num_workers=workers, **common)
            else:
                dm = SyntheticDerm7ptDataModule(
                    root=args.synthetic_root,
                    num_cases=args.num_cases,
                    synthetic_size=512,
                    cache=cache,
                    num_workers=workers,
                    **common,
                )
            torch.manual_seed(0)
            t0 = time.perf_counter()
            dm.setup("fit")
            setup_s = time.perf_counter() - t0
            pairs_s = measure(dm, args.batches, warmup=max(2, workers))
            rows.append(
                {"cache": cache, "workers": workers, "pairs_per_s": pairs_s, "setup_s": setup_s}
            )
            print(f"cache={cache} workers={workers}: {pairs_s:.1f} pairs/s, setup {setup_s:.1f} s")

    base = {r["workers"]: r["pairs_per_s"] for r in rows if r["cache"] == "none"}
    print("\n| cache | workers | pairs/s | views/s | vs no cache | setup s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["speedup_vs_no_cache"] = r["pairs_per_s"] / base[r["workers"]]
        print(
            f"| {r['cache']} | {r['workers']} | {r['pairs_per_s']:.1f} "
            f"| {4 * r['pairs_per_s']:.0f} | {r['speedup_vs_no_cache']:.2f}x | {r['setup_s']:.1f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "data": args.root or f"synthetic {args.num_cases} cases at 512 px",
        "views_per_pair": 4,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
