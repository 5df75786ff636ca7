"""Training pairs per second of SM3 stage 1 (or 2): with the data pipeline vs pre-made batches.

Both runs do the same optimizer steps (forward, backward, AdamW) of ``SM3Contrastive`` with
4 views per pair (``--stage 2``: ``SM3PseudoLabels``, frozen trunks, random pseudo-labels, 2
views per pair). The first takes its batches from the datamodule's training loader (decoded-
image cache, augmentation in loader workers); the second repeats one batch already in memory,
so it measures the model alone. Their ratio says how much the input pipeline costs.
Prints a table and writes JSON.

    python bench/step.py                                   # CPU-sized default
    python bench/step.py --backbone resnet50 --image-size 224 --batch-size 48 --device cuda \
        --precision bf16 --channels-last --sync-check        # a GPU, as the published recipe

``--augment-on device`` makes the views on the device (the pre-made batch then holds views made
once; the time to make one batch's views is reported too, eager and compiled);
``--compile-views`` compiles those views; ``--compile`` compiles the trunks;
``--sync-check`` counts host-device synchronisations in the model-alone steps and in the
full-pipeline steps (transfers and views on the device included; CUDA only,
``torch.cuda.set_sync_debug_mode``); ``--profile-views`` prints the profiler's table of one
batch's views (the datamodule's setting: compiled with ``--compile-views``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import date

import torch
from json_out import write_json  # bench/json_out.py (the script's folder is on sys.path)
from lightning.pytorch.utilities import move_data_to_device

from skinssl.callbacks.speed import speed_up
from skinssl.datamodules import SyntheticDerm7ptDataModule, Views
from skinssl.datamodules.base import default_workers
from skinssl.labels import CRITERIA
from skinssl.lightning_modules import SM3Contrastive, SM3PseudoLabels

PRECISION = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def pairs_per_second(
    model: SM3Contrastive | SM3PseudoLabels,
    dm: SyntheticDerm7ptDataModule,
    batches: Iterable[dict],
    steps: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype | None,
    prepared: bool = False,
) -> float:
    """Optimizer steps over ``batches`` (``prepared``: already on the device with views);
    pairs per second after ``warmup`` steps. ``dtype``: autocast precision, None for float32."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n, start = 0, 0.0
    for i, batch in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, n = time.perf_counter(), 0
        if not prepared:
            batch = move_data_to_device(dm.on_before_batch_transfer(batch, 0), device)
            batch = dm.on_after_batch_transfer(batch, 0)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model.training_step(batch, i)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += len(batch["index"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def count_syncs(run: Callable[[], float]) -> int:
    """Host-device synchronisations warned about by CUDA's sync debug mode during ``run``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def views_ms(
    dm: SyntheticDerm7ptDataModule, batch: dict, device: torch.device, fused: bool
) -> float:
    """Milliseconds to make one key batch's views on ``device`` (after two warm-up batches)."""
    dm.compile_views, before = fused, dm.compile_views
    times = []
    for _ in range(12):
        moved = move_data_to_device(dm.on_before_batch_transfer(dict(batch), 0), device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dm.on_after_batch_transfer(moved, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    dm.compile_views = before
    return 1000 * sum(times[2:]) / len(times[2:])


def views_profile(
    dm: SyntheticDerm7ptDataModule, batch: dict, device: torch.device
) -> tuple[str, dict[str, int]]:
    """The operations (and, on a GPU, kernels) of making one key batch's views, by time; and
    how many operations the host issued (top-level: each at least one launch on a GPU) and,
    on a GPU, how many kernels ran."""
    from torch.profiler import ProfilerActivity, profile

    moved = move_data_to_device(dm.on_before_batch_transfer(dict(batch), 0), device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        dm.on_after_batch_transfer(moved, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    events = prof.events()
    cpu = torch.autograd.DeviceType.CPU  # a GPU kernel's event has no CPU parent either
    counts = {"host operations": sum(e.cpu_parent is None and e.device_type == cpu for e in events)}
    if device.type == "cuda":
        counts["kernels"] = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in events)
    return prof.key_averages().table(sort_by=sort, row_limit=15), counts


def loader_batches(dm: SyntheticDerm7ptDataModule) -> Iterable[dict]:
    """Training batches, epoch after epoch (each epoch its own order, as in training)."""
    loader = dm.train_dataloader()
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=int, choices=[1, 2], default=1)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--synthetic-size", type=int, default=256,
                        help="height of the generated images (Derm7pt's: 512)")  # fmt: skip
    parser.add_argument("--num-cases", type=int, default=1011)
    parser.add_argument("--cache-size", type=int, default=None,
                        help="cached image side (default 8/7 of --image-size; Derm7pt's "
                        "published configs: 462)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--out", default="bench/results/step.json")
    parser.add_argument("--precision", choices=list(PRECISION), default="32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--augment-on", choices=["cpu", "device"], default="cpu")
    parser.add_argument("--compile-views", action="store_true")
    parser.add_argument("--sync-check", action="store_true")
    parser.add_argument("--profile-views", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached
    torch.set_float32_matmul_precision("high")  # as skinssl's CLI: TF32 in 32-bit runs

    device = torch.device(args.device)
    dtype = PRECISION[args.precision]
    workers = default_workers() if args.workers is None else args.workers
    dm = SyntheticDerm7ptDataModule(
        root=args.root,
        num_cases=args.num_cases,
        synthetic_size=args.synthetic_size,
        image_size=args.image_size,
        cache_size=args.cache_size or round(args.image_size * 8 / 7),
        batch_size=args.batch_size,
        num_workers=workers,
        derm_views=Views.simclr() if args.stage == 1 else Views.cluster(),
        augment_on=args.augment_on,
        compile_views=args.compile_views,
        # stage 1: full batches only, steps of one shape to time (its published config keeps
        # the last, smaller batch); stage 2 keeps it, as published
        drop_last=args.stage == 1,
    )
    dm.setup("fit")
    torch.manual_seed(0)
    model = (
        SM3Contrastive(backbone=args.backbone, gather_negatives=False)
        if args.stage == 1
        else SM3PseudoLabels(backbone=args.backbone)
    )
    model = model.to(device).train()
    speed_up(model, args.channels_last, args.compile)
    loader = dm.train_dataloader()
    if isinstance(model, SM3PseudoLabels):  # what the k-means callback would have set
        labels = torch.randint(0, 2, (len(dm.cases), len(CRITERIA)))
        model.set_clusters({}, labels, fresh=False)
    per_pair = dm.derm_views.n + dm.clinic_views.n
    loader.sampler.set_epoch(0)
    first = next(iter(loader))
    fixed = move_data_to_device(dm.on_before_batch_transfer(dict(first), 0), device)
    fixed = dm.on_after_batch_transfer(fixed, 0)

    def alone() -> float:
        batches = itertools.repeat(fixed)
        return pairs_per_second(model, dm, batches, args.steps, 2, device, dtype, prepared=True)

    def full() -> float:  # warm-up past the batches the workers made before the clock starts
        warmup = 2 + loader.num_workers * (loader.prefetch_factor or 0)
        return pairs_per_second(model, dm, loader_batches(dm), args.steps, warmup, device, dtype)

    rows = {
        "model alone (pre-made batch)": alone(),
        f"full pipeline ({loader.num_workers} workers, views on {args.augment_on})": full(),
    }
    check = args.sync_check and device.type == "cuda"
    syncs = (
        {"model alone": count_syncs(alone), "full pipeline": count_syncs(full)} if check else None
    )
    views = profiled = None
    if args.augment_on == "device":
        views = {f: views_ms(dm, first, device, f == "compiled") for f in ("eager", "compiled")}
        if args.profile_views:  # after views_ms: compiled and warm
            table, profiled = views_profile(dm, first, device)
            print(table)
    base = rows["model alone (pre-made batch)"]
    print("\n| input | pairs/s | views/s | share of model alone |\n|---|---|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.1f} | {per_pair * value:.0f} | {100 * value / base:.0f} % |")
    if syncs is not None:
        for name, count in syncs.items():
            print(f"host-device synchronisations in {args.steps + 2} {name} steps: {count}")
    if views is not None:
        print("ms to make one batch's views on the device: " + ", ".join(
            f"{k} {v:.1f}" for k, v in views.items()))  # fmt: skip
    if profiled is not None:
        print("one batch's views: " + ", ".join(f"{v} {k}" for k, v in profiled.items()))
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": str(device),
        **{k: v for k, v in vars(args).items() if k not in ("out", "root")},
        "workers": loader.num_workers,
        "cache_size": dm.cache_size,
    }
    result = {
        "meta": meta,
        "pairs_per_s": rows,
        "syncs": syncs,
        "views_ms": views,
        "views_profile": profiled,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
