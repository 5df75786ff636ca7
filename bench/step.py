"""Training pairs per second of SM3 stage 1: with the data pipeline vs with pre-made batches.

Both runs do the same optimizer steps (forward, backward, AdamW) of ``SM3Contrastive`` with
4 views per pair. The first takes its batches from the datamodule's training loader (decoded-
image cache, augmentation in loader workers); the second repeats one batch already in memory,
so it measures the model alone. Their ratio says how much the input pipeline costs.
Prints a table and writes JSON.

    python bench/step.py                                   # CPU-sized default
    python bench/step.py --backbone resnet50 --image-size 224 --batch-size 48 --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
import warnings
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import torch
from lightning.pytorch.utilities import move_data_to_device

from skinssl.datamodules import SyntheticDerm7ptDataModule, Views
from skinssl.datamodules.base import default_workers
from skinssl.lightning_modules import SM3Contrastive


def pairs_per_second(
    model: SM3Contrastive,
    dm: SyntheticDerm7ptDataModule,
    batches: Iterable[dict],
    steps: int,
    warmup: int,
    device: torch.device,
) -> float:
    """Optimizer steps over ``batches``; pairs per second after ``warmup`` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n, start = 0, 0.0
    for i, batch in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, n = time.perf_counter(), 0
        batch = dm.on_after_batch_transfer(move_data_to_device(batch, device), 0)
        loss = model.training_step(batch, i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += len(batch["index"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def loader_batches(dm: SyntheticDerm7ptDataModule) -> Iterable[dict]:
    """Training batches, epoch after epoch."""
    loader = dm.train_dataloader()
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--out", default="bench/results/step.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached

    device = torch.device(args.device)
    workers = default_workers() if args.workers is None else args.workers
    dm = SyntheticDerm7ptDataModule(
        root=args.root,
        image_size=args.image_size,
        cache_size=round(args.image_size * 8 / 7),
        batch_size=args.batch_size,
        num_workers=workers,
        derm_views=Views.simclr(),
    )
    dm.setup("fit")
    torch.manual_seed(0)
    model = SM3Contrastive(backbone=args.backbone, gather_negatives=False).to(device).train()
    fixed = next(iter(dm.train_dataloader()))
    rows = {
        "model alone (pre-made batch)": pairs_per_second(
            model, dm, itertools.repeat(fixed), args.steps, 2, device
        ),
        f"full pipeline ({workers} workers)": pairs_per_second(
            model, dm, loader_batches(dm), args.steps, 2, device
        ),
    }
    alone = rows["model alone (pre-made batch)"]
    print("\n| input | pairs/s | views/s | share of model alone |\n|---|---|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.1f} | {4 * value:.0f} | {100 * value / alone:.0f} % |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": str(device),
        **{k: v for k, v in vars(args).items() if k not in ("out", "root")},
        "workers": workers,
    }
    out.write_text(json.dumps({"meta": meta, "pairs_per_s": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
