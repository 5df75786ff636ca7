"""Training views made on the accelerator, a batch at a time, drawn as the CPU path draws them.

The same steps and parameter ranges as :func:`skinssl.datamodules.views.train_pipeline`
(albumentations): random resized crop (scale, ratio 3/4-4/3, 10 tries then a centre crop),
horizontal/vertical flip, colour jitter (brightness, contrast, saturation, hue in a random order
per image), grayscale, 3x3 Gaussian blur. Crops are resampled with the CPU path's weights
(anti-aliased bilinear, as PIL: :func:`resample`, two batched matrix products), colour
operations run in float and the result is rounded to uint8 once (the CPU path rounds after every
step), so single pixels differ a little while the distributions match
(``tests/test_device_views.py``).

Each view draws all its random numbers in one call (:func:`uniforms`); the rest is one pure
function of them (:func:`view`), which ``torch.compile`` turns into a few kernels
(:func:`fused_view`) instead of some hundred small ones.

:class:`DeviceImages` holds the decoded-image cache on the accelerator, copied there once.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from skinssl.datamodules.images import ImageStore
from skinssl.datamodules.views import Views

GRAY = (0.299, 0.587, 0.114)  # OpenCV's RGB -> gray, as albumentations uses


TRIES = 10
"""Draws of area and aspect ratio per random resized crop before its centre-crop fallback."""
COLUMNS = {
    "area": TRIES, "log_ratio": TRIES, "top": 1, "left": 1, "hflip": 1, "vflip": 1,
    "factors": 3, "hue": 1, "order": 4, "jitter": 1, "gray": 1, "sigma": 1, "blur": 1,
}  # fmt: skip
"""The uniform numbers each image draws for one view, by purpose, in column order."""


def uniforms(n: int, gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """Every random number of one view of ``n`` images, in one draw: [N, k] per purpose."""
    u = torch.rand(n, sum(COLUMNS.values()), generator=gen, device=device)
    return dict(zip(COLUMNS, u.split(list(COLUMNS.values()), dim=1), strict=True))


def _scaled(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def crop_boxes(sizes: Tensor, scale: tuple[float, float], u: dict[str, Tensor]) -> Tensor:
    """[N, 4] boxes (x1, y1, x2, y2) of random resized crops of images of ``sizes`` [N, 2] (h, w)
    from the :func:`uniforms` ``u``.

    Per image, the first of ``TRIES`` draws of area and aspect ratio that fits; else the largest
    centred crop with a ratio in [3/4, 4/3].
    """
    h, w = sizes[:, :1].float(), sizes[:, 1:].float()
    area = h * w * _scaled(u["area"], *scale)
    ratio = _scaled(u["log_ratio"], math.log(3 / 4), math.log(4 / 3)).exp()
    cw, ch = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
    fits = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = torch.where(fits.any(1), fits.float().argmax(1), -1)
    pick = first.clamp(min=0)[:, None]
    cw, ch = cw.gather(1, pick)[:, 0], ch.gather(1, pick)[:, 0]
    h, w = h[:, 0], w[:, 0]
    # fallback: a centred crop whose ratio is clamped to [3/4, 4/3]
    in_ratio = w / h
    fb_w = torch.where(in_ratio > 4 / 3, (h * 4 / 3).round(), w)
    fb_h = torch.where(in_ratio < 3 / 4, (w * 4 / 3).round(), h)
    ok = first >= 0
    cw, ch = torch.where(ok, cw, fb_w), torch.where(ok, ch, fb_h)
    top = torch.where(ok, (u["top"][:, 0] * (h - ch + 1)).floor(), ((h - ch) / 2).floor())
    left = torch.where(ok, (u["left"][:, 0] * (w - cw + 1)).floor(), ((w - cw) / 2).floor())
    return torch.stack([left, top, left + cw, top + ch], dim=1)


def _weights(start: Tensor, length: Tensor, extent: int, size: int) -> Tensor:
    """[N, size, extent] weights resampling each image's [start, start + length) [N] of an axis
    of ``extent`` pixels to ``size``: PIL's anti-aliased bilinear (as :func:`~skinssl.datamodules.
    views.resize`), a triangle around each output pixel's centre, widened by the scale when
    shrinking, over the pixels of the crop, normalised."""
    scale = (length / size)[:, None, None]
    centre = start[:, None, None] + (torch.arange(size, device=start.device)[:, None] + 0.5) * scale
    pixel = torch.arange(extent, device=start.device) + 0.5
    w = (1 - (pixel - centre).abs() / scale.clamp(min=1)).clamp(min=0)
    inside = (pixel > start[:, None, None]) & (pixel < (start + length)[:, None, None])
    w = torch.where(inside, w, 0.0)
    return w / w.sum(2, keepdim=True)


def resample(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Each image's box (x1, y1, x2, y2 [N, 4], whole pixels) of float ``images`` [N, C, H, W]
    resampled to [N, C, size, size] by :func:`_weights`: the rows, then the columns, each a
    batched matrix product (tensor cores; TF32 where the run allows it)."""
    n, c, h, w = images.shape
    wx = _weights(boxes[:, 0], boxes[:, 2] - boxes[:, 0], w, size)
    wy = _weights(boxes[:, 1], boxes[:, 3] - boxes[:, 1], h, size)
    rows = torch.bmm(images.reshape(n, c * h, w), wx.transpose(1, 2)).view(n, c, h, size)
    return wy[:, None] @ rows


def _gray(x: Tensor) -> Tensor:
    """Luma [N, 1, H, W] of RGB images [N, 3, H, W] (constants as Python numbers: no copy to
    the device, which would wait for it)."""
    return x[:, :1] * GRAY[0] + x[:, 1:2] * GRAY[1] + x[:, 2:] * GRAY[2]


def _hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` [N] (fractions of a turn)."""
    r, g, b = x.unbind(1)
    high, low = x.amax(1), x.amin(1)
    delta = high - low
    safe = torch.where(delta > 0, delta, 1.0)
    h = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2,
                                                                 (r - g) / safe + 4))  # fmt: skip
    h = (torch.where(delta > 0, h, 0.0) + 6 * shift.view(-1, 1, 1)) % 6
    k = (torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1) + h[:, None]) % 6
    return high[:, None] - delta[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def _jitter(x: Tensor, factors: Tensor, hue: Tensor, order: Tensor) -> Tensor:
    """ColorJitter on float [0, 1] images: per image, in its ``order`` [N, 4] (-1: not
    jittered), brightness, contrast and saturation (blends with black, the mean grey and the
    grey image by ``factors`` [N, 3]) and a hue rotation by ``hue`` [N].

    Each of the four slots runs on the whole batch, each image taking its own operation there;
    no step depends on values read back from the device.
    """
    for slot in range(4):
        op = order[:, slot]  # 0-2 blends, 3 hue, -1 nothing
        per_image = op.view(-1, 1, 1, 1)
        gray = _gray(x)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        base = torch.where(per_image == 1, mean, torch.where(per_image == 2, gray, 0.0))
        blend = (per_image >= 0) & (per_image <= 2)
        f = factors.gather(1, op.clamp(0, 2)[:, None]).view(-1, 1, 1, 1)
        x = torch.where(blend, (base + f * (x - base)).clamp(0, 1), x)
        shift = torch.where(op == 3, hue, 0.0)
        x = torch.where(per_image == 3, _hue(x, shift).clamp(0, 1), x)
    return x


def _blur(x: Tensor, taps: Tensor) -> Tensor:
    """Separable 3x3 blur of each image by its own ``taps`` [N, 3], reflect-101 border (as
    OpenCV's default); as shifted sums, which fuse, rather than a grouped convolution."""
    t = [taps[:, i].view(-1, 1, 1, 1) for i in range(3)]
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    rows = p[..., :-2] * t[0] + p[..., 1:-1] * t[1] + p[..., 2:] * t[2]
    return rows[..., :-2, :] * t[0] + rows[..., 1:-1, :] * t[1] + rows[..., 2:, :] * t[2]


def draw(u: dict[str, Tensor], views: Views) -> dict[str, Tensor]:
    """The per-image parameters of the steps after the crop that ``views`` turns on, from the
    :func:`uniforms` ``u``."""
    d: dict[str, Tensor] = {}
    for name, flag in (("hflip", views.hflip), ("vflip", views.vflip)):
        if flag:
            d[name] = u[name][:, 0] < 0.5
    if views.p_color_jitter > 0:
        b, c, s, h = views.color_jitter
        ranges = (max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s)
        d["factors"] = torch.stack(
            [_scaled(u["factors"][:, i], *r) for i, r in enumerate(ranges)], 1
        )
        d["hue"] = _scaled(u["hue"][:, 0], -h, h)
        d["order"] = torch.where(u["jitter"] < views.p_color_jitter, u["order"].argsort(dim=1), -1)
    if views.p_grayscale > 0:
        d["gray"] = u["gray"][:, 0] < views.p_grayscale
    if views.p_blur > 0:
        sigma = _scaled(u["sigma"], *views.blur_sigma)
        offsets = torch.arange(-1.0, 2.0, device=sigma.device)  # made there: no copy, no wait
        taps = torch.exp(-(offsets**2) / (2 * sigma**2))
        # off: the identity kernel (1 in the middle), so that no image needs a second branch
        d["taps"] = torch.where(u["blur"] < views.p_blur, taps / taps.sum(1, keepdim=True),
                                offsets == 0)  # fmt: skip
    return d


def colour(x: Tensor, d: dict[str, Tensor], normal: tuple[Tensor, Tensor] | None) -> Tensor:
    """Flips, colour jitter, grayscale and blur of crops ``x`` (float [N, 3, S, S] in [0, 255])
    by the parameters ``d`` of :func:`draw`, rounded once: uint8 [N, 3, S, S], or with
    ``normal`` (mean, std [3, 1, 1] on the 0-255 scale) float normalised as
    :class:`~skinssl.datamodules.views.Normalize` does."""
    x = x / 255
    for name, dim in (("hflip", -1), ("vflip", -2)):
        if name in d:
            x = torch.where(d[name].view(-1, 1, 1, 1), x.flip(dim), x)
    if "order" in d:
        x = _jitter(x, d["factors"], d["hue"], d["order"])
    if "gray" in d:
        x = torch.where(d["gray"].view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    if "taps" in d:
        x = _blur(x, d["taps"])
    x = (x * 255).round().clamp(0, 255)
    return x.to(torch.uint8) if normal is None else (x - normal[0]) / normal[1]


def view(
    images: Tensor,
    sizes: Tensor,
    u: dict[str, Tensor],
    views: Views,
    size: int,
    normal: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """One view of each image (float [N, 3, H, W], each in the top-left ``sizes`` of its slot)
    from the :func:`uniforms` ``u``: crop, resample, then :func:`colour`."""
    x = resample(images, crop_boxes(sizes, views.crop_scale, u), size)
    return colour(x, draw(u, views), normal)


@functools.cache
def fuses_by_default(device_type: str) -> bool:
    """``compile_views``' default: on CUDA where Triton (torch.compile's GPU kernels) is
    installed; looked up once per process, not per batch."""
    return device_type == "cuda" and importlib.util.find_spec("triton") is not None


@functools.cache
def fused_view() -> Callable[..., Tensor]:
    """:func:`view` compiled (``torch.compile``): the crop boxes and parameters in a few small
    kernels, the element-wise steps fused into a few that read and write the crops a few times
    instead of some hundred."""
    return torch.compile(view, dynamic=False)


def device_views(
    images: Tensor,
    sizes: Tensor,
    views: Views,
    size: int,
    gen: torch.Generator,
    fused: bool = False,
    normal: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """One random view of each image: [N, 3, H, W] uint8 or float in [0, 255] (each image in
    the top-left ``sizes[i]`` (h, w) of its slot) -> uint8 [N, 3, size, size], on the images'
    device (float normalised by ``normal``, see :func:`colour`). One draw of random numbers,
    then the view as one function of them: :func:`fused_view` with ``fused``."""
    views.check()
    u = uniforms(len(images), gen, images.device)
    return (fused_view() if fused else view)(images.float(), sizes, u, views, size, normal)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class DeviceImages:
    """Cached images on one device (the datamodule's: the training split's), uint8
    [M, 3, H, W], and their sizes [M, 2] (h, w).

    Each image sits in the top-left corner of a slot of the largest size, the rest of which is
    zero: the crops' weights are zero outside their boxes, and zeros (unlike uninitialised
    memory, which may hold NaN) add nothing.
    """

    def __init__(
        self,
        store: ImageStore,
        device: torch.device,
        keep: Iterable[int] | None = None,
        batch: int = 0,
        size: int = 0,
    ) -> None:
        """The images ``keep`` of ``store`` (all by default), in that order. On a GPU, first a
        clear error unless its free memory holds them and about the working memory that views
        of ``batch`` of them at ``size`` px need: their slots gathered, then as float (5 bytes
        a value), and the resampling's float weights (about three at a time while they are
        made), half-resampled rows and their copy for the second product."""
        arrays = [store[int(i)] for i in (range(len(store)) if keep is None else keep)]
        height = max(a.shape[0] for a in arrays)
        width = max(a.shape[1] for a in arrays)
        cache = len(arrays) * 3 * height * width  # uint8
        resampling = 4 * (3 * size * (height + width) + 2 * 3 * height * size)  # resample()
        work = batch * (3 * height * width * 5 + resampling)
        if device.type == "cuda" and cache + work > (free := torch.cuda.mem_get_info(device)[0]):
            raise ValueError(
                f"augment_on: device needs {_size(cache + work)} on {device}: {_size(cache)} for "
                f"the {len(arrays)} cached images ({height} x {width} each) and {_size(work)} to "
                f"make views of a batch of {batch}; {_size(free)} is free there. Use "
                "augment_on: cpu, or a smaller cache_size or batch_size"
            )
        self.images = torch.zeros(len(arrays), 3, height, width, dtype=torch.uint8, device=device)
        for i, a in enumerate(arrays):
            h, w = a.shape[:2]
            self.images[i, :, :h, :w] = torch.from_numpy(a.transpose(2, 0, 1).copy()).to(device)
        self.sizes = torch.tensor([a.shape[:2] for a in arrays], device=device)

    def views(
        self,
        ids: Tensor,
        views: Views,
        size: int,
        gen: torch.Generator,
        fused: bool = False,
        normal: tuple[Tensor, Tensor] | None = None,
    ) -> list[Tensor]:
        """``views.n`` random views [B, 3, size, size] of the images ``ids`` (see
        :func:`device_views`)."""
        if views.n == 0:  # a modality without views: nothing gathered
            return []
        images, sizes = self.images[ids].float(), self.sizes[ids]
        return [
            device_views(images, sizes, views, size, gen, fused, normal) for _ in range(views.n)
        ]
