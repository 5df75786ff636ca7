"""Views made batched on the accelerator have the distribution of the CPU (albumentations) views.

Compared on the CPU by statistics of many views of one image: the crop geometry read off a
coordinate-coded image (two-sample Kolmogorov-Smirnov distance), and colour statistics under the
stage-1 jitter, grayscale and blur (quantiles). Pixels differ a little by construction: the
device path resamples crops bilinearly and rounds once, the CPU path rounds after every step.
The device path runs on ``SKINSSL_TEST_DEVICE`` (default ``cpu``; ``cuda`` on a GPU machine).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from skinssl.datamodules.device_views import crop_boxes, device_views, uniforms
from skinssl.datamodules.views import (
    Normalize,
    Views,
    eval_pipeline,
    seed_pipeline,
    train_pipeline,
)

H, W, N, SIZE = 96, 144, 600, 48
# On a GPU the device side draws from CUDA's random stream, not the CPU's, so the tests meet
# samples that CI never saw: the limits follow each statistic's sampling distribution (a false
# failure in about 1000 runs or fewer per check), not one seed's values.
KS_LIMIT = 1.95 * np.sqrt(2 / N)  # two-sample Kolmogorov-Smirnov critical value, alpha 0.001
DEVICE = torch.device(os.environ.get("SKINSSL_TEST_DEVICE", "cpu"))
YY, XX = np.mgrid[0:H, 0:W]


def ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = [np.searchsorted(np.sort(v), grid, side="right") / len(v) for v in (a, b)]
    return float(np.abs(cdf[0] - cdf[1]).max())


def on_device(images: np.ndarray, seed: int, views: Views, size: int = SIZE) -> np.ndarray:
    """Views of HWC uint8 ``images`` [N, H, W, 3] made by the device path on DEVICE."""
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).to(DEVICE)
    sizes = torch.tensor([images.shape[1:3]] * len(images), device=DEVICE)
    gen = torch.Generator(DEVICE).manual_seed(seed)
    return device_views(batch, sizes, views, size, gen).cpu().numpy()


def cpu_and_device(image: np.ndarray, views: Views) -> tuple[np.ndarray, np.ndarray]:
    """N views [N, 3, SIZE, SIZE] as float, by the CPU pipeline and by the device path."""
    pipe = train_pipeline(views, SIZE)
    seed_pipeline(pipe, 0)
    cpu = np.stack([pipe(image=image)["image"] for _ in range(N)]).transpose(0, 3, 1, 2)
    dev = on_device(np.repeat(image[None], N, 0), 0, views)
    return cpu.astype(np.float64), dev.astype(np.float64)


def test_crop_geometry_and_flips_match() -> None:
    coords = np.stack([XX * 255 / (W - 1), YY * 255 / (H - 1), np.full((H, W), 128.0)], -1)
    cpu, dev = cpu_and_device(coords.round().astype(np.uint8), Views(crop_scale=(0.3, 1.0)))

    def width(v: np.ndarray) -> np.ndarray:  # red codes x: the crop's width share
        return np.abs(v[:, 0, :, -1] - v[:, 0, :, 0]).mean(1) / 255

    def height(v: np.ndarray) -> np.ndarray:  # green codes y
        return (v[:, 1, -1] - v[:, 1, 0]).mean(1) / 255

    def centre(v: np.ndarray) -> np.ndarray:
        return v[:, 0].mean((1, 2)) / 255

    def middle(v: np.ndarray) -> np.ndarray:  # the crop's vertical place
        return v[:, 1].mean((1, 2)) / 255

    for stat in (width, height, centre, middle):
        assert ks(stat(cpu), stat(dev)) < KS_LIMIT, stat.__name__

    def flipped(v: np.ndarray) -> float:
        return float((v[:, 0, :, -1].mean(1) < v[:, 0, :, 0].mean(1)).mean())

    assert flipped(cpu) == pytest.approx(0.5, abs=0.07)
    assert flipped(dev) == pytest.approx(0.5, abs=0.07)


def test_saturation_zero_gives_each_pixels_grey() -> None:
    """Saturation blends each pixel with its own grey (not the image's mean grey)."""
    from skinssl.datamodules.device_views import _gray, _jitter

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    factors = torch.tensor([[1.0, 1.0, 0.0]] * 2)  # brightness, contrast 1; saturation 0
    order = torch.tensor([[2, -1, -1, -1]] * 2)  # the saturation step only
    out = _jitter(x, factors, torch.zeros(2), order)
    torch.testing.assert_close(out, _gray(x).expand_as(x))
    weights = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma, as albumentations' grey
    torch.testing.assert_close(_gray(x)[:, 0], torch.einsum("c,bchw->bhw", weights, x))


def test_colour_statistics_match_under_stage1_views() -> None:
    rng = np.random.default_rng(0)
    ramp = np.stack([XX * 255 / (W - 1), YY * 255 / (H - 1), 255 - XX * 255 / (W - 1)], -1)
    image = (0.6 * ramp + 0.4 * rng.integers(0, 256, (H, W, 3))).round().astype(np.uint8)
    views = Views(crop_scale=(0.9, 1.0), hflip=False, p_color_jitter=0.8, p_grayscale=0.2,
                  p_blur=0.5)  # fmt: skip
    cpu, dev = cpu_and_device(image, views)
    stats = {
        "red mean": lambda v: v[:, 0].mean((1, 2)),
        "blue mean": lambda v: v[:, 2].mean((1, 2)),
        "contrast": lambda v: v.std((1, 2, 3)),
        "saturation": lambda v: (v.max(1) - v.min(1)).mean((1, 2)),
        "sharpness": lambda v: np.abs(np.diff(v, axis=3)).mean((1, 2, 3)),
        # red rises and blue falls left to right: tells the grey weights of red and blue apart
        "red slope": lambda v: v[:, 0, :, -8:].mean((1, 2)) - v[:, 0, :, :8].mean((1, 2)),
    }
    for name, stat in stats.items():
        a, b = stat(cpu), stat(dev)
        spread = np.quantile(a, 0.9) - np.quantile(a, 0.1)
        for q in (0.1, 0.5, 0.9):
            assert abs(np.quantile(a, q) - np.quantile(b, q)) < 0.1 * spread + 2, (name, q)

    def gray(v: np.ndarray) -> float:
        return float((np.abs(v[:, 0] - v[:, 1]).max((1, 2)) < 2).mean())

    four_sd = 4 * np.sqrt(views.p_grayscale * (1 - views.p_grayscale) / N)
    assert gray(cpu) == pytest.approx(views.p_grayscale, abs=four_sd)
    assert gray(dev) == pytest.approx(views.p_grayscale, abs=four_sd)


def test_crops_stay_inside_each_image() -> None:
    sizes = torch.tensor([[40, 60], [100, 30], [8, 8]] * 50, device=DEVICE)
    u = uniforms(len(sizes), torch.Generator(DEVICE).manual_seed(1), DEVICE)
    boxes = crop_boxes(sizes, (0.08, 1.0), u)
    h, w = sizes[:, 0].float(), sizes[:, 1].float()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_same_generator_same_views() -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 40, 3), dtype=np.uint8)
    a, b, c = (on_device(images, seed, Views.simclr(), 24) for seed in (3, 3, 4))
    assert a.shape == (4, 3, 24, 24) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_datamodule_makes_training_views_on_the_device(tmp_path) -> None:
    """``augment_on: device``: key batches from the loader, views made after the transfer."""
    from test_pipeline import dm_for, make_csv

    def first_batch(augment_on: str, seed: int = 0, before: bool = True) -> dict:
        torch.manual_seed(seed)
        dm = dm_for(make_csv(tmp_path, n=20), derm_views=Views.simclr(), augment_on=augment_on)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(0)
        batch = next(iter(loader))
        if before:  # as Lightning: the views seed is read while the batch is on the CPU
            batch = dm.on_before_batch_transfer(batch, 0)
        return dm.on_after_batch_transfer(batch, 0)

    unhooked = first_batch("device", before=False)  # the seed read back from the batch instead
    hooked = first_batch("device")
    assert "views_seed" not in hooked
    assert all(torch.equal(a, b) for a, b in zip(hooked["derm"], unhooked["derm"], strict=True))

    cpu, dev = first_batch("cpu"), first_batch("device")
    assert torch.equal(cpu["index"], dev["index"])  # the same order: only where views are made
    for key in ("derm", "clinic"):
        assert len(dev[key]) == 2 and dev[key][0].shape == cpu[key][0].shape == (4, 3, 24, 24)
        assert dev[key][0].dtype == torch.float32  # normalised as the CPU views
        assert not torch.equal(dev[key][0], dev[key][1])
    again, other = first_batch("device"), first_batch("device", seed=1)
    assert torch.equal(dev["derm"][0], again["derm"][0])
    assert not torch.equal(dev["derm"][0], other["derm"][0])
    with pytest.raises(ValueError, match="needs the decoded-image cache"):
        dm_for(make_csv(tmp_path, n=20), augment_on="device", cache="none")
    # training batches are case ids: made in this process; evaluation still uses the workers
    dm = dm_for(make_csv(tmp_path, n=20), augment_on="device", num_workers=2)
    dm.setup("fit")
    assert dm.train_dataloader().num_workers == 0 and dm.val_dataloader().num_workers == 2


def test_each_case_gets_views_of_its_own_images_and_only_training_images_go(
    tmp_path,
) -> None:
    """Full-image crops without flips or colour: each case's device view is nearest to its own
    CPU view (noise images, so any other case's is far). The device holds the training split's
    images only (16 of the 20 cases here)."""
    from test_pipeline import dm_for, make_csv

    views = Views(crop_scale=(1.0, 1.0), hflip=False)
    made, csv = {}, make_csv(tmp_path, n=20)
    for where in ("cpu", "device"):
        dm = dm_for(csv, batch_size=8, derm_views=views, augment_on=where)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(0)
        made[where] = dm.on_after_batch_transfer(
            dm.on_before_batch_transfer(next(iter(loader)), 0), 0
        )
    assert torch.equal(made["cpu"]["index"], made["device"]["index"])
    for key in ("derm", "clinic"):
        cpu, dev = (made[w][key].flatten(1) for w in ("cpu", "device"))
        assert torch.equal(torch.cdist(dev, cpu).argmin(1), torch.arange(len(cpu))), key
    assert len(dm._device_images.images) == 2 * 16 < len(dm._store)


def test_views_of_a_smaller_image_take_nothing_from_its_slots_padding() -> None:
    """A smaller image sits in the top-left of its zero-filled slot, and its views are its own:
    nothing beyond the image weighs in, so a bright image's views stay bright to its edges."""
    from skinssl.datamodules.device_views import DeviceImages

    store = [np.full((20, 20, 3), 200, np.uint8), np.zeros((24, 40, 3), np.uint8)]
    images = DeviceImages(store, torch.device("cpu"))
    assert images.images.shape == (2, 3, 24, 40)
    assert (images.images[0, :, :20, :20] == 200).all()
    assert images.sizes.tolist() == [[20, 20], [24, 40]]
    whole = Views(n=2, crop_scale=(1.0, 1.0))  # crops up to the image's edges
    ids, gen = torch.tensor([1, 0]), torch.Generator().manual_seed(0)
    both = images.views(ids, whole, 16, gen)
    assert [v.shape for v in both] == [(2, 3, 16, 16)] * 2
    assert all((v[1] == 200).all() for v in both)
    assert images.views(ids, Views(n=0), 16, gen) == []  # a modality without views


def test_a_cache_larger_than_the_free_gpu_memory_is_a_clear_error(monkeypatch) -> None:
    """Checked before anything is allocated on the GPU (so this runs without one)."""
    from skinssl.datamodules.device_views import DeviceImages

    store = [np.zeros((462, 718, 3), np.uint8)] * 4  # 3.8 MiB in all
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**20, 2**30))
    expected = (
        r"needs 24.1 MiB on cuda: 3.8 MiB for the 4 cached images \(462 x 718 each\) and "
        r"20.3 MiB to make views of a batch of 2; 1.0 MiB is free there. Use augment_on: cpu"
    )
    with pytest.raises(ValueError, match=expected):
        DeviceImages(store, torch.device("cuda"), batch=2, size=224)


def test_datamodule_checks_the_memory_for_its_batch_and_view_size(tmp_path, monkeypatch) -> None:
    import inspect

    from test_pipeline import dm_for, make_csv

    import skinssl.datamodules.base as base

    made, real = [], base.DeviceImages

    def recording(*args, **kwargs):  # noqa: ANN202
        given = inspect.signature(real).bind(*args, **kwargs).arguments
        made.append((given.get("batch"), given.get("size")))
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "DeviceImages", recording)
    dm = dm_for(make_csv(tmp_path, n=20), augment_on="device", batch_size=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(loader)), 0), 0)
    assert made == [(3, dm.image_size)]


def test_shrinking_is_anti_aliased_on_both_paths() -> None:
    """Black/white pixel noise shrunk about 5x averages out (each output pixel weighs some ten
    source pixels each way); sampling one point per output pixel would keep most of its
    contrast (std about 127)."""
    big = 240
    noise = np.random.default_rng(0).integers(0, 2, (big, big, 1), dtype=np.uint8) * 255
    image = noise.repeat(3, 2)
    views = Views(crop_scale=(1.0, 1.0), p_color_jitter=0.0)
    pipe = train_pipeline(views, SIZE)
    seed_pipeline(pipe, 0)
    cpu = np.stack([pipe(image=image)["image"] for _ in range(20)])
    dev = on_device(np.repeat(image[None], 20, 0), 0, views)
    resized = eval_pipeline(SIZE)(image=image)["image"]
    for name, v in (("cpu", cpu), ("device", dev), ("eval", resized)):
        v = v.astype(np.float64)
        assert abs(v.mean() - 127.5) < 6 and v.std() < 45, (name, v.mean(), v.std())


def test_cpu_crops_resample_as_the_device_views() -> None:
    """``resize`` (the CPU crops, torch's uint8 kernel) and ``resample`` (the device crops, two
    matrix products) weigh the same pixels alike: equal within a grey level everywhere,
    shrinking, enlarging and at the image's edges; and both are PIL's anti-aliased bilinear."""
    from PIL import Image

    from skinssl.datamodules.device_views import resample
    from skinssl.datamodules.views import resize

    image = np.random.default_rng(3).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    for box in ((0, 0, 140, 90), (10, 5, 120, 83), (30, 20, 52, 41), (0, 0, 20, 90)):
        x0, y0, x1, y1 = box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        got = resize(crop, (SIZE, SIZE)).astype(int)
        device = resample(x, torch.tensor([box], dtype=torch.float), SIZE)[0]
        device = device.round().permute(1, 2, 0).numpy().astype(int)
        pil = np.asarray(Image.fromarray(crop).resize((SIZE, SIZE), Image.BILINEAR)).astype(int)
        for want in (device, pil):
            assert np.abs(got - want).max() <= 1, box
    whole = eval_pipeline(SIZE)(image=image)["image"].astype(int)  # the evaluation resize too
    pil = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BILINEAR)).astype(int)
    assert np.abs(whole - pil).max() <= 1
    # a pixel outside the box weighs nothing
    outside = x.clone()
    outside[..., :5, :] = 255 - outside[..., :5, :]
    box = torch.tensor([[10.0, 5, 120, 83]])
    assert torch.equal(resample(x, box, SIZE), resample(outside, box, SIZE))


def test_device_crops_under_the_runs_matmul_precision() -> None:
    """On ``SKINSSL_TEST_DEVICE`` with TF32 allowed, as the CLI allows it for training
    (``high``): the device crops stay within two grey levels of the CPU's, one on average
    far less (TF32 keeps 11 significant bits of each weight; on a CPU this is float32)."""
    from skinssl.datamodules.device_views import resample
    from skinssl.datamodules.views import resize

    image = np.random.default_rng(4).integers(0, 256, (300, 460, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(DEVICE)
    boxes = ((0, 0, 460, 300), (17, 9, 398, 290), (100, 50, 180, 120))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        made = resample(x.expand(3, -1, -1, -1), torch.tensor(boxes, device=DEVICE).float(), 224)
    finally:
        torch.set_float32_matmul_precision(before)
    for box, view in zip(boxes, made.round().permute(0, 2, 3, 1).cpu().numpy(), strict=True):
        x0, y0, x1, y1 = box
        diff = np.abs(resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (224, 224)) - view)
        assert diff.max() <= 2 and diff.mean() < 0.2, (box, diff.max(), diff.mean())


def test_compiled_views_equal_eager_views() -> None:
    """``compile_views``: the compiled views are the eager views (a rare pixel may round the
    other way where the fused arithmetic differs in the last bit), uint8 or normalised."""
    images = np.random.default_rng(1).integers(0, 256, (8, 40, 56, 3), dtype=np.uint8)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).to(DEVICE)
    sizes = torch.tensor([[40, 56]] * 8, device=DEVICE)
    views = Views.simclr()
    eager, fused = (
        device_views(batch, sizes, views, 32, torch.Generator(DEVICE).manual_seed(5), fused=f)
        for f in (False, True)
    )
    diff = (eager.int() - fused.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    norm = Normalize().to(DEVICE)
    normal = (norm.mean, norm.std)
    for fused in (False, True):
        gen = torch.Generator(DEVICE).manual_seed(5)
        made = device_views(batch, sizes, views, 32, gen, fused, normal)
        expected = norm(eager)  # the same views, normalised after the rounding
        assert made.dtype == torch.float32
        assert ((made - expected).abs() * norm.std).max() <= 1.0001


def test_datamodule_compiles_views_when_asked(tmp_path, monkeypatch) -> None:
    """``compile_views``: on by default on CUDA only; asked for, the compiled views run;
    without views on the device it is a configuration error."""
    from test_pipeline import dm_for, make_csv

    from skinssl.datamodules import device_views as module

    calls = []

    def counted(images: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(len(images))
        return module.view(images, *args)

    monkeypatch.setattr(module, "fused_view", lambda: counted)
    csv = make_csv(tmp_path, n=20)
    for compile_views, fused_calls in ((None, 0), (True, 4)):  # None: eager on the CPU
        calls.clear()
        views = Views.simclr()
        dm = dm_for(csv, derm_views=views, augment_on="device", compile_views=compile_views)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
        assert len(calls) == fused_calls  # 2 derm + 2 clinic views
    with pytest.raises(ValueError, match="compile_views: true needs augment_on: device"):
        dm_for(csv, compile_views=True)


def test_each_view_draws_its_random_numbers_at_once() -> None:
    """One random draw per view, whatever steps are on: on a GPU, each small draw and each
    small operation on it would be a kernel launch of its own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Draws(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            self.count += func.overloadpacket in (torch.ops.aten.uniform_, torch.ops.aten.rand)
            return func(*args, **(kwargs or {}))

    images = torch.zeros(4, 3, 40, 50, dtype=torch.uint8)
    sizes = torch.tensor([[40, 50]] * 4)
    for views in (Views.simclr(), Views.cluster(), Views(n=3, vflip=True, p_blur=1.0)):
        with Draws() as draws:
            made = device_views(images, sizes, views, 16, torch.Generator().manual_seed(0))
        assert made.shape == (4, 3, 16, 16) and draws.count == 1


def test_views_are_the_same_under_deterministic_algorithms(monkeypatch) -> None:
    """``trainer.deterministic: true`` (deterministic algorithms; on a GPU cuBLAS with the
    workspace setting Lightning makes) changes no view."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 3, 40, 56), np.uint8))
    images, sizes = images.to(DEVICE), torch.tensor([[40, 56]] * 4, device=DEVICE)
    made = [device_views(images, sizes, Views.simclr(), 24, torch.Generator(DEVICE).manual_seed(9))]
    torch.use_deterministic_algorithms(True)
    try:
        gen = torch.Generator(DEVICE).manual_seed(9)
        made.append(device_views(images, sizes, Views.simclr(), 24, gen))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(made[0], made[1])
