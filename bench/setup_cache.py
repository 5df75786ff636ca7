"""Seconds and images of a data module's setup: the case table, then the decoded-image cache.

A fit decodes the images of its training and validation splits (``setup("fit")``); before
session 12 setup decoded every split, as ``setup(None)`` still does. Both on the built-in
synthetic Derm7pt-shaped data (1011 cases, the real splits), alternating, in one run. Prints a
Markdown table and writes JSON.

    python bench/setup_cache.py
    python bench/setup_cache.py --synthetic-size 512 --cache-size 462 --root data/synthetic-512
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date

from json_out import write_json  # bench/json_out.py (the script's folder is on sys.path)

from skinssl.datamodules import SyntheticDerm7ptDataModule

STAGES = {"fit (train + valid)": "fit", "every split (before)": None}


def setup_once(args: argparse.Namespace, stage: str | None) -> tuple[float, int]:
    """(seconds, images in the cache) of one fresh data module's setup."""
    dm = SyntheticDerm7ptDataModule(
        root=args.root, synthetic_size=args.synthetic_size, cache_size=args.cache_size,
        image_size=min(224, args.cache_size), num_workers=args.threads,
    )  # fmt: skip
    start = time.perf_counter()
    dm.setup(stage)
    seconds = time.perf_counter() - start
    return seconds, sum(a is not None for a in dm._store._arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--synthetic-size", type=int, default=256)
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/setup_cache.json")
    args = parser.parse_args()

    setup_once(args, "fit")  # generates the data when the folder is empty; warms the file cache
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in STAGES}
    for _ in range(args.repeats):
        for name, stage in STAGES.items():
            runs[name].append(setup_once(args, stage))
    base = statistics.median(s for s, _ in runs["every split (before)"])
    rows = []
    print("| setup | images decoded | seconds (median) | vs every split |\n|---|---|---|---|")
    for name, results in runs.items():
        seconds = statistics.median(s for s, _ in results)
        rows.append({"setup": name, "images": results[0][1], "seconds": seconds,
                     "all_seconds": [s for s, _ in results], "ratio": base / seconds})  # fmt: skip
        print(f"| {name} | {results[0][1]} | {seconds:.2f} | {base / seconds:.2f}x |")
    meta = {"date": str(date.today()), "machine": platform.platform(), **vars(args)}
    write_json(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
