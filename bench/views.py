"""Milliseconds per step of one stage-1 view on one thread: ours on a cached uint8 image, and the
authors' per-sample reference (OpenCV decode, torchvision transforms on PIL images).

``bench/dataloader.py`` gives the pipelines' pairs/s; this says where each one's time goes on
a machine, step by step: each step is timed as if always applied, then weighed by its
probability in ``Views.simclr()``. The reference decodes a JPEG per image, i.e. per two views.
Whole views are timed too (the steps' sum leaves out the pipelines' own overhead). Prints a
table and writes JSON.

    python bench/views.py                   # a Derm7pt-sized JPEG (512 x 768), cache 462 px
    python bench/views.py --cache-size 256
"""

from __future__ import annotations

import argparse
import functools
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from dataloader import reference_transform  # bench/dataloader.py
from json_out import write_json  # bench/json_out.py (the script's folder is on sys.path)
from PIL import Image
from torchvision import transforms as T

from skinssl.datamodules.views import DERM7PT_MEAN, DERM7PT_STD, Views, write_chw
from skinssl.datamodules.views import train_pipeline as our_pipeline


def per_call_ms(fn: Callable[[], object], seconds: float) -> float:
    """Mean milliseconds per call of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return 1e3 * elapsed / calls


def lesion_image(height: int, width: int) -> np.ndarray:
    """A smooth random RGB image (JPEG-compressible like a photograph)."""
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 4)


def our_steps(views: Views, cached: np.ndarray, size: int) -> list[tuple[str, float, Callable]]:
    """(step, probability, call) of our pipeline on ``cached``: each albumentations transform
    always applied (post-crop steps on a crop), then written into a CHW batch slot."""
    steps = our_pipeline(views, size).transforms
    crop = steps[0](image=cached)["image"]
    out = []
    for t in steps:
        p, t.p = t.p, 1.0
        image = cached if t is steps[0] else crop
        out.append((type(t).__name__, p, functools.partial(A.Compose([t]), image=image)))
    slot = torch.empty(3, size, size, dtype=torch.uint8)
    out.append(("into the CHW batch", 1.0, lambda: write_chw(crop, slot)))
    return out


def reference_steps(views: Views, path: Path, size: int) -> list[tuple[str, float, Callable]]:
    """(step, weight per view, call) of the reference, each step always applied: the decode
    serves two views, the others are weighed by their probability."""
    pil = Image.fromarray(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
    crop = T.RandomResizedCrop(size, scale=views.crop_scale)(pil)
    tensor = T.ToTensor()(crop)
    return [
        ("decode JPEG (OpenCV) + PIL", 0.5,
         lambda: Image.fromarray(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))),
        ("RandomResizedCrop", 1.0, lambda: T.RandomResizedCrop(size, views.crop_scale)(pil)),
        ("RandomHorizontalFlip", 0.5, lambda: T.RandomHorizontalFlip(1.0)(crop)),
        ("ColorJitter", views.p_color_jitter, lambda: T.ColorJitter(*views.color_jitter)(crop)),
        ("RandomGrayscale", views.p_grayscale, lambda: T.Grayscale(3)(crop)),
        ("GaussianBlur", views.p_blur, lambda: T.GaussianBlur(3, views.blur_sigma)(crop)),
        ("ToTensor", 1.0, lambda: T.ToTensor()(crop)),
        ("Normalize", 1.0, lambda: T.Normalize(DERM7PT_MEAN, DERM7PT_STD)(tensor)),
    ]  # fmt: skip


def whole_views(views: Views, cached: np.ndarray, path: Path, size: int) -> dict[str, Callable]:
    """One whole view per call: ours (the pipeline with its probabilities, then written into
    a CHW batch slot), and the reference's (a decode and two views, per two views)."""
    ours, reference = our_pipeline(views, size), reference_transform(views, size)
    slot = torch.empty(3, size, size, dtype=torch.uint8)

    def reference_pair() -> object:
        pil = Image.fromarray(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
        return reference(pil), reference(pil)

    return {
        "reference": reference_pair,
        "ours": lambda: write_chw(ours(image=cached)["image"], slot),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cache-size", type=int, default=462, help="cached image's short side")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per step")
    parser.add_argument("--out", type=Path, default=Path("bench/results/views.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # as inside a loader worker
    views, jpeg = Views.simclr(), lesion_image(512, 768)  # Derm7pt's image size
    scale = args.cache_size / 512
    cached = cv2.resize(jpeg, (round(768 * scale), args.cache_size), interpolation=cv2.INTER_AREA)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "lesion.jpg")
        cv2.imwrite(str(path), jpeg, [cv2.IMWRITE_JPEG_QUALITY, 95])
        for name, steps in (
            ("reference", reference_steps(views, path, args.image_size)),
            ("ours", our_steps(views, cached, args.image_size)),
        ):
            for step, weight, fn in steps:
                ms = per_call_ms(fn, args.seconds)
                rows.append({"pipeline": name, "step": step, "ms": ms, "weight": weight,
                             "ms_per_view": ms * weight})  # fmt: skip
        whole = {
            name: per_call_ms(fn, 4 * args.seconds) / (2 if name == "reference" else 1)
            for name, fn in whole_views(views, cached, path, args.image_size).items()
        }  # a reference call makes two views
    total = {
        n: sum(r["ms_per_view"] for r in rows if r["pipeline"] == n) for n in ("reference", "ours")
    }
    print("| pipeline | step | ms when applied | applied per view | ms per view |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pipeline']} | {r['step']} | {r['ms']:.3f} | {r['weight']:g} |"
              f" {r['ms_per_view']:.3f} |")  # fmt: skip
    for name, ms in total.items():
        print(f"| {name} | sum of the steps | | | {ms:.3f} |")
        print(f"| {name} | **a whole view, timed** | | | **{whole[name]:.3f}** |")
    print(f"reference / ours per whole view: {whole['reference'] / whole['ours']:.2f}x "
          f"(one thread; cache {args.cache_size} px, views {args.image_size} px)")  # fmt: skip
    machine = {
        "date": str(date.today()), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "opencv": cv2.__version__, "albumentations": A.__version__,
    }  # fmt: skip
    write_json(args.out, {"machine": machine, "args": vars(args) | {"out": str(args.out)},
                          "rows": rows, "ms_per_view_summed": total,
                          "ms_per_whole_view": whole})  # fmt: skip


if __name__ == "__main__":
    main()
