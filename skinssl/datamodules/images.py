"""Decoding images and the decoded-image cache.

Images are read with OpenCV, converted to RGB, cropped by a fixed border (Derm7pt images have a
black frame) and resized so that their shorter side is ``size`` (aspect kept). With the cache on,
that happens once per image; every epoch then only augments uint8 arrays.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from skinssl.datamodules.cases import DataError, listing

CacheMode = Literal["memory", "disk", "none"]


def decode(path: Path, border: int, size: int | None) -> np.ndarray:
    """RGB uint8 [H, W, 3] of ``path`` after border crop and short-side resize to ``size``."""
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    img = None if _truncated_jpeg(data) else cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot decode image {path}: the file is empty, truncated or not an image")
    h, w = img.shape[:2]
    if border > 0:
        if min(h, w) <= 2 * border:
            msg = f"{path}: image of {w}x{h} px is too small for a {border}-px border crop"
            raise DataError(msg)
        img = img[border : h - border, border : w - border]
        h, w = img.shape[:2]
    if size is not None and min(h, w) != size:
        scale = size / min(h, w)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, new, interpolation=interp)
    return np.ascontiguousarray(img[:, :, ::-1])


def _truncated_jpeg(data: np.ndarray) -> bool:
    """True for an empty file or a JPEG with no end-of-image marker after its last scan.

    OpenCV decodes a truncated JPEG without error (the missing rows come out grey), so this is
    checked explicitly.
    """
    raw = data.tobytes()
    if not raw:
        return True
    if not raw.startswith(b"\xff\xd8"):
        return False
    last_scan = raw.rfind(b"\xff\xda")
    return last_scan < 0 or raw.find(b"\xff\xd9", last_scan) < 0


class ImageStore:
    """Decoded images of a list of files, looked up by position.

    ``memory``: each image decoded once and kept as a uint8 array, the positions a stage needs
    together in threads (``load``), any other when first read; ``disk``: the same, also saved as
    ``.npy`` under ``cache_dir`` and memory-mapped on later runs; ``none``: decoded on every
    access (the per-sample reference behaviour). A missing or unreadable image is an error when
    loaded, or with ``strict=False`` on access (prediction reports it per case); ``uses`` says
    in it what each file is (e.g. its table rows).
    """

    def __init__(
        self,
        paths: list[Path],
        border: int,
        size: int,
        mode: CacheMode = "memory",
        cache_dir: str | Path | None = None,
        threads: int = 2,
        strict: bool = True,
        uses: dict[Path, str] | None = None,
    ) -> None:
        if mode == "disk" and cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir")
        self.paths = paths
        self.border = border
        self.size = size
        self.mode = mode
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.strict = strict
        self.uses = uses or {}
        self.threads = max(1, threads)
        self._arrays: list[np.ndarray | DataError | None] | None = None
        if mode != "none":
            self._arrays = [None] * len(paths)

    def load(self, positions: Iterable[int]) -> None:
        """Decode the images at ``positions`` not yet held, in threads (nothing without a
        cache); with ``strict``, one error naming every one that cannot be read."""
        if self._arrays is None:
            return
        wanted = list(dict.fromkeys(positions))
        todo = [i for i in wanted if self._arrays[i] is None]
        with ThreadPoolExecutor(self.threads) as pool:
            loaded = pool.map(self._load_or_error, [self.paths[i] for i in todo])
            for i, item in zip(todo, loaded, strict=True):
                self._arrays[i] = item
        # also those a tolerant stage (prediction) found unreadable before
        errors = [self._arrays[i] for i in wanted if isinstance(self._arrays[i], DataError)]
        if self.strict and len(errors) == 1:
            raise errors[0]
        if self.strict and errors:  # every bad image at once, not one per run
            listed = listing([str(e) for e in errors], 20)
            raise DataError(f"{len(errors)} images cannot be read:{listed}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        """The decoded image; DataError if it cannot be read."""
        if self._arrays is None:
            try:
                return decode(self.paths[i], self.border, self.size)
            except DataError as error:
                raise self._named(error, self.paths[i]) from None
        if self._arrays[i] is None:  # not among the positions loaded for the stage
            self._arrays[i] = self._load_or_error(self.paths[i])
        item = self._arrays[i]
        if isinstance(item, DataError):
            raise item
        return item

    def _load_or_error(self, path: Path) -> np.ndarray | DataError:
        """``_load``, or its error (raised on access when not ``strict``)."""
        try:
            return self._load(path)
        except DataError as error:
            return self._named(error, path)

    def _named(self, error: DataError, path: Path) -> DataError:
        """``error`` saying what ``path`` is (its ``uses``)."""
        return DataError(f"{error} ({self.uses[path]})") if path in self.uses else error

    def _load(self, path: Path) -> np.ndarray:
        if self.mode != "disk":
            return decode(path, self.border, self.size)
        assert self.cache_dir is not None
        cached = self.cache_dir / f"{self._key(path)}.npy"
        if cached.is_file():
            # copy-on-write: a writable array (torch warns on read-only ones) whose writes,
            # were there any, would never reach the file
            return np.load(cached, mmap_mode="c")
        img = decode(path, self.border, self.size)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")  # ranks may write at once
        np.save(tmp, img)
        tmp.replace(cached)
        return img

    def _key(self, path: Path) -> str:
        """Changes when the file, the border or the size change."""
        st = path.stat()
        text = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.border}|{self.size}"
        return hashlib.sha1(text.encode()).hexdigest()
