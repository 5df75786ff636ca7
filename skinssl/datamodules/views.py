"""Augmented views (albumentations 2.0.8) and the normalisation applied on the device.

Pipelines produce uint8 CHW tensors; normalisation to float happens batched after the transfer to
the device (see ``Normalize``), so workers never touch float images and transfers are 4x smaller.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.augmentations.crops import functional as fcrops

DERM7PT_MEAN = (0.7833, 0.6712, 0.6026)
DERM7PT_STD = (0.2139, 0.2472, 0.2571)


@dataclass
class Views:
    """How many augmented views of one modality a training sample yields, and how they look.

    The defaults are the fine-tuning views (RandomResizedCrop 0.3-1 + flip). ``simclr()`` and
    ``cluster()`` give SM3's stage-1 and stage-2 views. ``n = 0`` makes no training views of the
    modality (an empty list): for single-modality pretraining, which does not use it.
    """

    n: int = 1
    crop_scale: tuple[float, float] = (0.3, 1.0)
    hflip: bool = True
    vflip: bool = False
    color_jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    p_color_jitter: float = 0.0
    p_grayscale: float = 0.0
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    @classmethod
    def simclr(cls) -> Views:
        """SM3 stage 1: two views, RRC 0.5-1, jitter 0.8, grayscale 0.2, flip, blur 0.5."""
        return cls(n=2, crop_scale=(0.5, 1.0), p_color_jitter=0.8, p_grayscale=0.2, p_blur=0.5)

    @classmethod
    def cluster(cls) -> Views:
        """SM3 stage 2: one view, RRC 0.5-1, jitter p=0.5, flip."""
        return cls(n=1, crop_scale=(0.5, 1.0), p_color_jitter=0.5)

    def check(self) -> None:
        lo, hi = self.crop_scale
        if self.n < 0 or not 0 < lo <= hi <= 1:
            raise ValueError(f"invalid views {self}: need n >= 0 and 0 < crop_scale[0] <= [1] <= 1")
        for name in ("p_color_jitter", "p_grayscale", "p_blur"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} = {getattr(self, name)} is not a probability in [0, 1]")
        *strengths, hue = self.color_jitter
        if min(strengths) < 0 or not 0 <= hue <= 0.5:
            raise ValueError(
                f"color_jitter = {self.color_jitter}: brightness, contrast and saturation must "
                "be >= 0 and hue in [0, 0.5]"
            )
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma = {self.blur_sigma}: need 0 < low <= high")


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HWC uint8 ``image`` resized to ``size`` (h, w) by bilinear interpolation, anti-aliased
    when shrinking (the triangle filter widened by the scale): PIL's resampling, which the
    authors' torchvision transforms use, within a grey level; torch's uint8 kernel, 3-4x faster
    than OpenCV's area filter. The device views resample with the same weights."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None]  # channels-last strides: the fast path
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return cv2.merge(list(y[0].contiguous().numpy()))  # planes -> HWC: 20x numpy's transpose


class ResizedCrop(A.RandomResizedCrop):
    """albumentations' RandomResizedCrop (its crop boxes) resampled by :func:`resize`."""

    def apply(
        self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: object
    ) -> np.ndarray:
        return resize(fcrops.crop(img, *crop_coords), self.size)


class Resize(A.ImageOnlyTransform):
    """The whole image resampled to ``size`` x ``size`` by :func:`resize`."""

    def __init__(self, size: int) -> None:
        super().__init__(p=1.0)
        self.size = size

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        return resize(img, (self.size, self.size))


def train_pipeline(views: Views, size: int) -> A.Compose:
    """Random view of a cached uint8 image: crop first, then the colour operations."""
    views.check()
    b, c, s, h = views.color_jitter
    steps: list[A.BasicTransform] = [
        ResizedCrop(size=(size, size), scale=views.crop_scale, ratio=(3 / 4, 4 / 3)),
    ]
    if views.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if views.vflip:
        steps.append(A.VerticalFlip(p=0.5))
    if views.p_color_jitter > 0:
        steps.append(
            A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=views.p_color_jitter)
        )
    if views.p_grayscale > 0:
        steps.append(A.ToGray(num_output_channels=3, p=views.p_grayscale))
    if views.p_blur > 0:
        steps.append(
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=views.blur_sigma, p=views.p_blur)
        )
    return A.Compose(steps)


def eval_pipeline(size: int) -> A.Compose:
    """Deterministic view: resized to ``size`` x ``size`` as the authors' test transform
    (torchvision's ``Resize((size, size))`` on PIL images: anti-aliased bilinear)."""
    return A.Compose([Resize(size)])


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Seed a pipeline with one generator shared by all its transforms.

    ``Compose.set_random_seed`` would give every transform the same seed, which correlates their
    decisions; one shared stream avoids that.
    """
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))


def write_chw(image: np.ndarray, out: torch.Tensor) -> None:
    """Write an HWC uint8 view into ``out``, a CHW uint8 tensor of the same size (OpenCV's
    split into the planes: 8x numpy's transposed copy)."""
    planes = list(out.numpy())
    fits = image.shape == (*out.shape[1:], out.shape[0])
    if not fits or cv2.split(image, planes)[0] is not planes[0]:  # else OpenCV would reallocate
        raise RuntimeError(f"a view of shape {image.shape} does not fit {tuple(out.shape)}")


class Normalize(torch.nn.Module):
    """uint8 [.., 3, H, W] -> float normalised with dataset mean/std, on whatever device."""

    def __init__(
        self, mean: tuple[float, ...] = DERM7PT_MEAN, std: tuple[float, ...] = DERM7PT_STD
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1) * 255, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:  # the datamodule is not moved with the model
            self.to(x.device)
        return (x.float() - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float -> uint8 image (for showing what the model was fed)."""
        return (
            (x.float() * self.std.to(x.device) + self.mean.to(x.device))
            .round()
            .clamp(0, 255)
            .byte()
        )
