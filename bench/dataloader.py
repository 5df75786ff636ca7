"""Pairs per second of SM3 pretraining views (2 dermoscopic + 2 clinical views, 224 px).

Compares, in the main process (0 workers: no shared memory between processes), with one loader
worker and with one per core:
- ``reference``: how the authors' code loads data, per access: OpenCV reads the JPEGs, PIL
  images go through torchvision's transforms to normalised float tensors;
- ours with ``cache: none``: the JPEG decoded on every access, albumentations views on uint8;
- ours with ``cache: memory``: every image decoded once; only the views are made per access;
- ``memory-derm-only``: the same for single-modality pretraining, no clinical views made;
- ``device`` (with a GPU): ``augment_on: device``, the views made on the GPU a batch at a time
  (the training loader then has no workers: its batches are case ids); ``device-compiled``:
  the same with ``compile_views``. They are compared with the reference on every core.
With CUDA, every loader pins its batches, as a training loader does (the reference's
float views are 4x the bytes of our uint8 ones), and the main-process rows also time the
pinning of one batch alone; hide the GPUs (``CUDA_VISIBLE_DEVICES=``) to compare the pipelines
unpinned. Prints a table and writes JSON.

    python bench/dataloader.py                      # synthetic data at Derm7pt's image size
    python bench/dataloader.py --root /data/derm7pt # the real release
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

import cv2
import torch
from json_out import write_json  # bench/json_out.py (the script's folder is on sys.path)
from lightning.pytorch.utilities import move_data_to_device
from lightning_utilities.core.apply_func import apply_to_collection
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from skinssl.datamodules import Derm7ptDataModule, SyntheticDerm7ptDataModule, Views
from skinssl.datamodules.base import default_workers
from skinssl.datamodules.views import DERM7PT_MEAN, DERM7PT_STD


def reference_transform(v: Views, size: int) -> T.Compose:
    """The authors' stage-1 view of a PIL image: torchvision's transforms to a normalised
    float tensor."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=v.crop_scale),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(*v.color_jitter)], p=v.p_color_jitter),
        T.RandomGrayscale(p=v.p_grayscale),
        T.RandomApply([T.GaussianBlur(3, v.blur_sigma)], p=v.p_blur),
        T.ToTensor(),
        T.Normalize(DERM7PT_MEAN, DERM7PT_STD),
    ])  # fmt: skip


class ReferencePairs(Dataset):
    """The per-sample reference: read both JPEGs with OpenCV, crop the frame, and make two
    torchvision views of each (the stage-1 views of ``Views.simclr()``) on every access."""

    def __init__(self, dm: Derm7ptDataModule) -> None:
        rows = dm.split_rows("train")
        self.paths = [(dm.cases.derm[r], dm.cases.clinic[r]) for r in rows]
        self.border = dm.border_crop
        self.transform = reference_transform(Views.simclr(), dm.image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, object]:
        views = []
        for path in self.paths[i]:
            img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            b = self.border
            pil = Image.fromarray(img[b:-b, b:-b] if b else img)
            views += [self.transform(pil), self.transform(pil)]
        return {"index": i, "views": views}


def one_thread(worker_id: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def reference_loader(dm: Derm7ptDataModule) -> DataLoader:
    return DataLoader(
        ReferencePairs(dm),
        batch_size=dm.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=dm.num_workers,
        pin_memory=torch.cuda.is_available(),  # as ours (and a training loader) pins
        persistent_workers=dm.num_workers > 0,
        worker_init_fn=one_thread,
    )


def on_device(dm: Derm7ptDataModule, device: torch.device):  # noqa: ANN201
    """Per batch: move to ``device`` and make the views there (``augment_on: device``)."""

    def finish(batch: dict) -> dict:
        batch = move_data_to_device(dm.on_before_batch_transfer(batch, 0), device)
        out = dm.on_after_batch_transfer(batch, 0)
        torch.cuda.synchronize(device)
        return out

    return finish


def endless(loader: DataLoader):  # noqa: ANN201
    """The loader's batches, epoch after epoch (an epoch may be shorter than the warm-up)."""
    if len(loader) == 0:
        raise ValueError("the loader has no batch: fewer training cases than --batch-size")
    while True:
        yield from loader


def measure(loader: DataLoader, batches: int, warmup: int, finish=None) -> float:  # noqa: ANN001
    """Pairs per second over ``batches`` batches after ``warmup`` (workers started, caches hot);
    ``finish`` is applied to each batch (the device views)."""
    finish = finish or (lambda b: b)
    it = endless(loader)
    for _ in range(warmup):
        finish(next(it))
    start = time.perf_counter()
    n = sum(len(finish(next(it))["index"]) for _ in range(batches))
    return n / (time.perf_counter() - start)


def pin_ms_per_pair(batch: dict, repeats: int = 5) -> float:
    """Milliseconds per pair to copy ``batch``'s tensors into page-locked memory, as a loader
    with ``pin_memory`` does for every batch (copied to pageable memory first)."""
    pageable = apply_to_collection(batch, torch.Tensor, lambda t: t.clone())
    apply_to_collection(pageable, torch.Tensor, lambda t: t.pin_memory())  # warm the allocator
    start = time.perf_counter()
    for _ in range(repeats):
        apply_to_collection(pageable, torch.Tensor, lambda t: t.pin_memory())
    return 1e3 * (time.perf_counter() - start) / repeats / len(batch["index"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", help="Derm7pt release folder (default: synthetic data)")
    parser.add_argument("--synthetic-root", default="data/synthetic-512")
    parser.add_argument("--num-cases", type=int, default=1011)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--cache-size", type=int, default=256,
                        help="cached image side (Derm7pt's published configs: 462)")  # fmt: skip
    parser.add_argument("--out", default="bench/results/dataloader.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    common = dict(
        batch_size=args.batch_size,
        image_size=args.image_size,
        cache_size=args.cache_size,
        derm_views=Views.simclr(),
    )
    cores = default_workers()
    rows = []
    pipelines = ["reference", "none", "memory", "memory-derm-only"]
    pipelines += ["device", "device-compiled"] if torch.cuda.is_available() else []
    for cache in pipelines:
        for workers in [0] if cache.startswith("device") else sorted({0, 1, cores}):
            kwargs = dict(cache="none" if cache == "reference" else cache, num_workers=workers)
            if cache.startswith("device"):
                kwargs.update(cache="memory", augment_on="device")
                kwargs.update(compile_views=cache == "device-compiled")
            if cache == "memory-derm-only":  # single-modality pretraining: no clinical views
                kwargs.update(cache="memory", clinic_views=Views(n=0))
            if args.root:
                dm = Derm7ptDataModule(root=args.root, **kwargs, **common)
            else:
                dm = SyntheticDerm7ptDataModule(
                    root=args.synthetic_root,
                    num_cases=args.num_cases,
                    synthetic_size=512,
                    **kwargs,
                    **common,
                )
            torch.manual_seed(0)
            t0 = time.perf_counter()
            dm.setup("fit")
            setup_s = time.perf_counter() - t0
            loader = reference_loader(dm) if cache == "reference" else dm.train_dataloader()
            finish = on_device(dm, torch.device("cuda")) if cache.startswith("device") else None
            # warm-up past the batches the workers prefetch (2 each) before the clock starts
            pairs_s = measure(loader, args.batches, warmup=2 + 2 * workers, finish=finish)
            views = 2 if cache == "memory-derm-only" else 4
            row = {"cache": cache, "workers": workers, "pairs_per_s": pairs_s,
                   "setup_s": setup_s, "views_per_pair": views}  # fmt: skip
            if torch.cuda.is_available() and workers == 0 and not cache.startswith("device"):
                row["pin_ms_per_pair"] = pin_ms_per_pair(next(endless(loader)))
            del loader
            rows.append(row)
            pin = (
                f", pinning {row['pin_ms_per_pair']:.3f} ms a pair"
                if "pin_ms_per_pair" in row
                else ""
            )
            print(f"{cache} workers={workers}: {pairs_s:.1f} pairs/s, setup {setup_s:.1f} s{pin}")

    base = {r["workers"]: r["pairs_per_s"] for r in rows if r["cache"] == "reference"}
    print("\n| pipeline | workers | pairs/s | views/s | vs reference | setup s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        device = r["cache"].startswith("device")  # its loader has no workers: vs every core
        r["speedup_vs_reference"] = r["pairs_per_s"] / base[cores if device else r["workers"]]
        setup = f"{r['setup_s']:.1f}" if r["cache"] not in ("reference", "none") else "–"
        print(
            f"| {r['cache']} | {r['workers']} | {r['pairs_per_s']:.1f} "
            f"| {r['views_per_pair'] * r['pairs_per_s']:.0f} "
            f"| {r['speedup_vs_reference']:.2f}x | {setup} |"
        )
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "data": args.root or f"synthetic {args.num_cases} cases at 512 px",
        "views_per_pair": "4 (memory-derm-only: 2)",
        "image_size": args.image_size,
        "cache_size": args.cache_size,
        "batch_size": args.batch_size,
        "pinned": torch.cuda.is_available(),
    }
    write_json(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
