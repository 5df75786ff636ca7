"""Procedural dermoscopic + clinical lesion images for the synthetic Derm7pt-shaped dataset.

Every head of the seven-point schema changes what is drawn, so a model can learn each label from
the pixels: the diagnosis sets the outline, symmetry and colours, and each criterion adds its own
structures (network, streaks, veil, vessels, blotches, dots, regression). Label-free nuisances
(skin tone, hair, rulers, rotation, size, lighting, how visible each structure is) keep the task
from being trivially separable.

A lesion is built once as a *scene*: primitives in lesion units (outline radius about 1, centre at
the origin). The scene is rendered twice, close up through dermoscopy optics and from further away
as a clinical photo, so both modalities show the same lesion and only coarse cues survive in the
clinical image. Random draws come from independent streams per head, so changing one label
changes only what that label draws.

Everything is cv2 primitives and vectorised numpy on float32 RGB in [0, 1]: under 20 ms a pair
at 256 px on one core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from skinssl.labels import HEAD_NAMES, HEADS

Colour = tuple[float, float, float]
Rng = np.random.Generator

_SHIFT = 4
"""Sub-pixel bits for cv2 drawing."""
_EXTENT = 1.6
"""Half-width, in lesion units, of the square that holds a lesion and its streaks."""
_GRID = 16
"""Resolution of the lesion's smooth fields (centre gradient, mottling) before warping."""


def image_shape(size: int) -> tuple[int, int]:
    """(height, width) of a painted image: 3:2 landscape like the 768x512 Derm7pt images."""
    return size, round(size * 1.5)


# --------------------------------------------------------------------------------------------
# Scene description


@dataclass
class _Layer:
    """Primitives of one colour, blended together onto the image.

    ``strokes`` are groups of open polylines ``([n, k, 2] points, width)``; ``dots`` is
    ``[n, 3]`` (x, y, radius); sizes in the scene's units. ``clip`` confines the layer to the
    lesion body.
    """

    colour: Colour
    alpha: float
    blur: float = 0.0
    clip: bool = True
    fills: list[np.ndarray] = field(default_factory=list)
    strokes: list[tuple[np.ndarray, float]] = field(default_factory=list)
    dots: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))


@dataclass(frozen=True)
class _Outline:
    """Lesion border as a radius function of the angle: harmonics, then an anisotropic stretch."""

    amps: np.ndarray
    phases: np.ndarray
    stretch: tuple[float, float]
    scale: float

    def radius(self, theta: np.ndarray) -> np.ndarray:
        k = np.arange(1, len(self.amps) + 1)
        wave = np.cos(np.multiply.outer(theta, k) + self.phases) @ self.amps
        return self.scale * (1.0 + wave)

    def point(self, theta: np.ndarray, frac: np.ndarray | float) -> np.ndarray:
        """Points at ``frac`` of the way from the centre to the border along angles ``theta``."""
        r = frac * self.radius(theta)
        return np.stack(
            [r * np.cos(theta) * self.stretch[0], r * np.sin(theta) * self.stretch[1]], -1
        )

    def polygon(self, n: int = 96) -> np.ndarray:
        return self.point(np.linspace(0, 2 * np.pi, n, endpoint=False), 1.0)

    def frac(self, pts: np.ndarray) -> np.ndarray:
        """How far each point is from the centre relative to the border (1 = on the border)."""
        x, y = pts[..., 0] / self.stretch[0], pts[..., 1] / self.stretch[1]
        return np.hypot(x, y) / self.radius(np.arctan2(y, x))

    def sample(self, rng: Rng, n: int, lo: float = 0.0, hi: float = 0.85) -> np.ndarray:
        """``n`` points spread evenly by area between ``lo`` and ``hi`` of the border."""
        theta = rng.uniform(0, 2 * np.pi, n)
        return self.point(theta, np.sqrt(rng.uniform(lo**2, hi**2, n)))


@dataclass
class _Scene:
    """One lesion: body outline and colours, then structure layers drawn in order."""

    outline: _Outline
    border_blur: float
    body_alpha: float
    centre: Colour
    edge: Colour
    mottle: float
    fields: np.ndarray
    """[_GRID, _GRID, 2] float32 over the lesion square: centre weight, mottling noise."""
    layers: list[_Layer]


# --------------------------------------------------------------------------------------------
# Small geometric helpers


def _rot(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _blob(centre: np.ndarray, radius: float, rng: Rng, irregular: float, n: int = 28) -> np.ndarray:
    """A closed blob polygon with a smooth random border (irregular = relative wobble)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(1, 5)
    amps = irregular * rng.uniform(0.3, 1.0, 4) / k
    r = radius * (1 + np.cos(np.multiply.outer(theta, k) + rng.uniform(0, 2 * np.pi, 4)) @ amps)
    r = np.maximum(r, 0.25 * radius)
    return centre + np.stack([r * np.cos(theta), r * np.sin(theta)], -1)


def _lattice(rng: Rng, spacing: float, jitter: float, hexagonal: bool) -> np.ndarray:
    """[rows, cols, 2] jittered square or hexagonal lattice covering the lesion square."""
    n = int(np.ceil(2 * _EXTENT / spacing)) + 1
    j, i = np.mgrid[0:n, 0:n].astype(float)
    x = i + (0.5 * (j % 2) if hexagonal else 0.0)
    y = j * (np.sqrt(3) / 2 if hexagonal else 1.0)
    pts = np.stack([x, y], -1) * spacing - _EXTENT
    pts = pts @ _rot(rng.uniform(0, np.pi)).T
    return pts + rng.normal(0, jitter * spacing, pts.shape)


def _directions(rng: Rng, n: int) -> np.ndarray:
    """[n, 2] unit vectors at random angles."""
    a = rng.uniform(0, 2 * np.pi, n)
    return np.stack([np.cos(a), np.sin(a)], -1)


def _with_radius(pts: np.ndarray, rng: Rng, lo: float, hi: float) -> np.ndarray:
    """[n, 3] dots: the points with a uniform random radius each."""
    return np.column_stack([pts, rng.uniform(lo, hi, len(pts))])


def _wiggle(
    start: np.ndarray, end: np.ndarray, k: int, bend: float, jitter: float, rng: Rng
) -> np.ndarray:
    """[n, k, 2] polylines from ``start`` to ``end`` ([n, 2] each): a smooth random arc of
    relative height ``bend`` plus ``jitter`` (relative) per-point wobble."""
    t = np.linspace(0, 1, k)[None, :, None]
    line = start[:, None] + t * (end - start)[:, None]
    normal = (end - start) @ _rot(np.pi / 2).T
    arc = rng.normal(0, bend, (len(start), 1, 1)) * 4 * t * (1 - t)
    wobble = rng.normal(0, jitter, (len(start), k, 1)) * np.sin(np.pi * t)
    return line + (arc + wobble) * normal[:, None]


# --------------------------------------------------------------------------------------------
# The diagnosis: outline, body colours, and diagnosis-specific structures

_SKIN_LIGHT = np.array([0.96, 0.82, 0.75])
_SKIN_DARK = np.array([0.60, 0.42, 0.31])


def _jitter(colour: Colour, rng: Rng, amount: float = 0.06) -> Colour:
    c = np.clip(
        np.asarray(colour) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 0.02, 3), 0, 1
    )
    return tuple(float(v) for v in c)


@dataclass(frozen=True)
class _DiagStyle:
    """How one diagnosis looks: outline harmonics (low, high), border softness, colours."""

    low: tuple[float, float]
    high: tuple[float, float]
    stretch: float
    border_blur: tuple[float, float]
    body_alpha: float
    centre: Colour
    edge: Colour
    mottle: float


_STYLES: dict[str, _DiagStyle] = {
    "BCC": _DiagStyle(
        low=(0.05, 0.12),
        high=(0.01, 0.03),
        stretch=1.3,
        border_blur=(0.05, 0.09),
        body_alpha=0.7,
        centre=(0.84, 0.52, 0.52),
        edge=(0.90, 0.64, 0.62),
        mottle=0.10,
    ),
    "NEV": _DiagStyle(
        low=(0.0, 0.04),
        high=(0.0, 0.008),
        stretch=1.15,
        border_blur=(0.03, 0.07),
        body_alpha=0.92,
        centre=(0.40, 0.25, 0.16),
        edge=(0.58, 0.41, 0.29),
        mottle=0.08,
    ),
    "MEL": _DiagStyle(
        low=(0.08, 0.22),
        high=(0.02, 0.05),
        stretch=1.45,
        border_blur=(0.01, 0.08),
        body_alpha=0.95,
        centre=(0.24, 0.14, 0.11),
        edge=(0.50, 0.34, 0.26),
        mottle=0.30,
    ),
    "MISC": _DiagStyle(
        low=(0.03, 0.12),
        high=(0.0, 0.03),
        stretch=1.3,
        border_blur=(0.04, 0.12),
        body_alpha=0.85,
        centre=(0.62, 0.36, 0.33),
        edge=(0.70, 0.50, 0.40),
        mottle=0.15,
    ),
    "SK": _DiagStyle(
        low=(0.04, 0.1),
        high=(0.012, 0.025),
        stretch=1.35,
        border_blur=(0.005, 0.015),
        body_alpha=0.95,
        centre=(0.50, 0.36, 0.26),
        edge=(0.64, 0.48, 0.36),
        mottle=0.45,
    ),
}


def _outline(style: _DiagStyle, rng: Rng) -> _Outline:
    k = np.arange(1, 13)
    amps = np.where(k <= 3, rng.uniform(*style.low, 12), rng.uniform(*style.high, 12))
    amps = amps / np.where(k <= 3, 1.0, np.sqrt(k / 4))
    sx = np.sqrt(rng.uniform(1.0, style.stretch))
    outline = _Outline(amps, rng.uniform(0, 2 * np.pi, 12), (sx, 1 / sx), 1.0)
    peak = np.hypot(*outline.polygon(180).T).max()
    return replace(outline, scale=1.0 / max(1.0, peak / 1.2))


def _fields(rng: Rng) -> np.ndarray:
    """Smooth fields on the lesion square: centre weight (1 at the centre) and mottling."""
    ax = np.linspace(-_EXTENT, _EXTENT, _GRID)
    r2 = ax[None, :] ** 2 + ax[:, None] ** 2
    centre = np.clip(1 - r2, 0, 1)
    mottle = rng.uniform(0, 1, (_GRID, _GRID))
    return np.stack([centre, mottle], -1).astype(np.float32)


def _diagnosis_extras(name: str, o: _Outline, rng: Rng) -> list[_Layer]:
    """Structures typical of a diagnosis (not checklist criteria)."""
    if name == "MEL":  # several colours in uneven patches
        palette = [(0.08, 0.06, 0.06), (0.55, 0.22, 0.18), (0.45, 0.46, 0.56), (0.62, 0.46, 0.34)]
        picks = rng.choice(len(palette), rng.integers(2, 5), replace=False)
        return [
            _Layer(
                _jitter(palette[p], rng),
                rng.uniform(0.45, 0.75),
                0.08,
                fills=[_blob(o.sample(rng, 1, 0.2, 0.8)[0], rng.uniform(0.15, 0.35), rng, 0.4)],
            )
            for p in picks
        ]
    if name == "SK":  # milia-like cysts and comedo-like openings
        cysts, pores = (o.sample(rng, int(rng.integers(3, 12)), 0, 0.8) for _ in range(2))
        return [
            _Layer((0.95, 0.92, 0.78), 0.8, 0.01, dots=_with_radius(cysts, rng, 0.02, 0.04)),
            _Layer((0.22, 0.15, 0.1), 0.7, 0.01, dots=_with_radius(pores, rng, 0.02, 0.035)),
        ]
    if name == "BCC":  # blue-grey ovoid nests and shiny white areas
        nests = [
            _blob(c, rng.uniform(0.08, 0.16), rng, 0.2) for c in o.sample(rng, rng.integers(0, 4))
        ]
        shine = [
            _blob(c, rng.uniform(0.1, 0.2), rng, 0.3) for c in o.sample(rng, rng.integers(0, 3))
        ]
        return [
            _Layer((0.35, 0.4, 0.5), 0.7, 0.03, fills=nests),
            _Layer((0.97, 0.95, 0.95), 0.5, 0.05, fills=shine),
        ]
    if name == "MISC":  # vascular lacunae, dermatofibroma scar, or nothing (lentigo, melanosis)
        kind = rng.integers(3)
        if kind == 0:
            lac = _with_radius(o.sample(rng, int(rng.integers(6, 16)), 0, 0.75), rng, 0.06, 0.14)
            return [_Layer((0.55, 0.1, 0.22), 0.8, 0.02, dots=lac)]
        if kind == 1:
            return [_Layer((0.93, 0.9, 0.88), 0.7, 0.06, fills=[_blob(np.zeros(2), 0.3, rng, 0.3)])]
    return []


# --------------------------------------------------------------------------------------------
# The seven criteria: each returns the layers for its class (absent = none)

_BROWN = (0.24, 0.14, 0.09)
_DARK = (0.14, 0.08, 0.06)
_RED = (0.80, 0.12, 0.18)


def _pigment_network(o: _Outline, rng: Rng, cls: int, vis: float) -> list[_Layer]:
    """Typical: regular fine mesh fading out at the border. Atypical: broken thick uneven mesh."""
    if cls == 0:
        return []
    typical = cls == 1
    spacing = rng.uniform(0.075, 0.1) if typical else rng.uniform(0.09, 0.14)
    pts = _lattice(rng, spacing, 0.06 if typical else 0.15, hexagonal=False)
    segs = np.concatenate(
        [
            np.stack([pts[:, :-1], pts[:, 1:]], 2).reshape(-1, 2, 2),
            np.stack([pts[:-1], pts[1:]], 2).reshape(-1, 2, 2),
        ]
    )
    mid = segs.mean(1)
    if typical:
        keep = o.frac(mid) < rng.uniform(0.8, 0.95)
        return [_Layer(_jitter(_BROWN, rng), 0.85 * vis, 0.004, strokes=[(segs[keep], 0.018)])]
    side = mid @ _rot(rng.uniform(0, 2 * np.pi))[0]
    keep = (o.frac(mid) < 1.0) & (side > rng.uniform(-0.5, 0.0)) & (rng.random(len(segs)) > 0.25)
    thick = rng.random(len(segs)) < 0.5
    return [
        _Layer(
            _jitter(_DARK, rng),
            0.85 * vis,
            0.004,
            strokes=[(segs[keep & thick], 0.035), (segs[keep & ~thick], 0.022)],
        )
    ]


def _streaks(o: _Outline, rng: Rng, cls: int, vis: float) -> list[_Layer]:
    """Regular: radial lines evenly all around the border. Irregular: uneven, on one side."""
    if cls == 0:
        return []
    if cls == 1:
        n = int(rng.integers(26, 40))
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.normal(0, 0.03, n)
        start, end = (
            o.point(theta, 0.85),
            o.point(theta, rng.uniform(1.12, 1.2) + rng.normal(0, 0.02, n)),
        )
        tips = np.column_stack([end, np.full(n, 0.028)])
        return [
            _Layer(
                _jitter(_BROWN, rng),
                0.85 * vis,
                0.005,
                clip=False,
                strokes=[(_wiggle(start, end, 3, 0.05, 0.0, rng), 0.022)],
                dots=tips,
            )
        ]
    lines = []
    for _ in range(rng.integers(1, 3)):
        n = int(rng.integers(6, 15))
        theta = rng.uniform(0, 2 * np.pi) + rng.uniform(-1, 1, n) * rng.uniform(0.4, 0.9)
        start = o.point(theta, rng.uniform(0.75, 0.9, n))
        end = o.point(theta + rng.normal(0, 0.12, n), 1.0 + rng.uniform(0.1, 0.4, n))
        lines.append(_wiggle(start, end, 4, 0.2, 0.1, rng))
    lines = np.concatenate(lines)
    thick = rng.random(len(lines)) < 0.5
    return [
        _Layer(
            _jitter(_DARK, rng),
            0.85 * vis,
            0.005,
            clip=False,
            strokes=[(lines[thick], 0.04), (lines[~thick], 0.02)],
        )
    ]


def _blue_white_veil(o: _Outline, rng: Rng, cls: int, vis: float) -> list[_Layer]:
    """Present: a confluent blue haze under a whitish ground-glass film."""
    if cls == 0:
        return []
    blobs = [
        _blob(c, rng.uniform(0.3, 0.55), rng, 0.3)
        for c in o.sample(rng, rng.integers(1, 3), 0, 0.5)
    ]
    return [
        _Layer(_jitter((0.40, 0.50, 0.70), rng), 0.75 * vis, 0.08, fills=blobs),
        _Layer((0.80, 0.84, 0.92), 0.35 * vis, 0.12, fills=[0.75 * b for b in blobs]),
    ]


def _vascular(o: _Outline, rng: Rng, cls: int, vis: float) -> list[_Layer]:
    """Regular: arborizing trees or comma vessels. Irregular: dotted or linear irregular vessels."""
    if cls == 0:
        return []
    colour, alpha = _jitter(_RED, rng), 0.9 * vis
    if cls == 1 and rng.random() < 0.6:
        return [_Layer(colour, alpha, 0.006, strokes=_trees(o, rng))]
    if cls == 1:
        c = o.sample(rng, int(rng.integers(12, 26)))
        d = rng.uniform(0.07, 0.12, (len(c), 1)) * _directions(rng, len(c))
        return [
            _Layer(
                colour,
                alpha,
                0.006,
                strokes=[(_wiggle(c - d / 2, c + d / 2, 4, 0.5, 0.0, rng), 0.03)],
            )
        ]
    if rng.random() < 0.55:
        centre = o.sample(rng, 1, 0, 0.5)
        dots = centre + rng.normal(0, rng.uniform(0.25, 0.45), (int(rng.integers(40, 120)), 2))
        dots = dots[o.frac(dots) < 0.95]
        return [_Layer(colour, alpha, 0.004, dots=_with_radius(dots, rng, 0.015, 0.028))]
    c = o.sample(rng, int(rng.integers(8, 18)))
    d = rng.uniform(0.1, 0.25, (len(c), 1)) * _directions(rng, len(c))
    return [_Layer(colour, alpha, 0.004, strokes=[(_wiggle(c, c + d, 6, 0.2, 0.3, rng), 0.024)])]


def _trees(o: _Outline, rng: Rng) -> list[tuple[np.ndarray, float]]:
    """Arborizing vessels: a few branching trees, thinner at each level."""
    widths = (0.05, 0.036, 0.026, 0.018)
    levels: list[list[np.ndarray]] = [[] for _ in widths]
    roots = o.sample(rng, int(rng.integers(2, 5)), 0.2, 0.8)
    stack = [(p, rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.45), 0) for p in roots]
    while stack:
        p, angle, length, depth = stack.pop()
        q = p + length * np.array([np.cos(angle), np.sin(angle)])
        levels[depth].append(_wiggle(p[None], q[None], 4, 0.15, 0.1, rng)[0])
        if depth + 1 < len(widths):
            for turn in (-1, 1):
                stack.append((q, angle + turn * rng.uniform(0.3, 0.7), 0.65 * length, depth + 1))
    return [(np.stack(segs), w) for segs, w in zip(levels, widths, strict=True)]


def _pigmentation(o: _Outline, rng: Rng, cls: int, vis: float) -> list[_Layer]:
    """Regular: even, symmetric blotches. Irregular: eccentric uneven dark blotches."""
    if cls == 0:
        return []
    if cls == 1 and rng.random() < 0.6:
        blobs = [_blob(np.zeros(2), rng.uniform(0.5, 0.7), rng, 0.05)]
        return [_Layer(_jitter(_BROWN, rng), 0.65 * vis, 0.1, fills=blobs)]
    if cls == 1:
        n = int(rng.integers(3, 6))
        theta = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, n, endpoint=False)
        r = rng.uniform(0.16, 0.22)
        blobs = [_blob(c, r * rng.uniform(0.95, 1.05), rng, 0.05) for c in o.point(theta, 0.5)]
        return [_Layer(_jitter(_BROWN, rng), 0.7 * vis, 0.04, fills=blobs)]
    n = int(rng.integers(1, 4))
    theta = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.6, 0.6, n)
    centres = o.point(theta, rng.uniform(0.35, 0.75, n))
    blobs = [_blob(c, rng.uniform(0.15, 0.45), rng, 0.35) for c in centres]
    return [_Layer(_jitter(_DARK, rng), 0.8 * vis, 0.04, fills=blobs)]


def _dots_globules(o: _Outline, rng: Rng, cls: int, vis: float) -> list[_Layer]:
    """Regular: evenly spread dots of one size. Irregular: scattered clusters of uneven dots."""
    if cls == 0:
        return []
    if cls == 1:
        pts = _lattice(rng, rng.uniform(0.13, 0.18), 0.08, hexagonal=True).reshape(-1, 2)
        pts = pts[o.frac(pts) < 0.8]
        r = rng.uniform(0.02, 0.03) * rng.uniform(0.92, 1.08, len(pts))
        return [_Layer(_jitter(_BROWN, rng), 0.9 * vis, 0.004, dots=np.column_stack([pts, r]))]
    clusters = []
    for _ in range(rng.integers(2, 5)):
        centre = o.point(rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0))
        n = int(rng.integers(4, 17))
        clusters.append(centre + rng.normal(0, rng.uniform(0.06, 0.14), (n, 2)))
    pts = np.concatenate(clusters)
    dots = _with_radius(pts, rng, 0.008, 0.05)
    black = rng.random(len(pts)) < 0.6
    return [
        _Layer(_jitter(_DARK, rng), 0.9 * vis, 0.004, clip=False, dots=dots[black]),
        _Layer(_jitter((0.35, 0.38, 0.46), rng), 0.85 * vis, 0.004, clip=False, dots=dots[~black]),
    ]


def _regression(o: _Outline, rng: Rng, cls: int, vis: float) -> list[_Layer]:
    """Present: white scar-like areas peppered with fine blue-grey granules."""
    if cls == 0:
        return []
    centres = o.sample(rng, int(rng.integers(1, 3)), 0.1, 0.6)
    radii = rng.uniform(0.18, 0.35, len(centres))
    scars = [_blob(c, r, rng, 0.35) for c, r in zip(centres, radii, strict=True)]
    pepper = np.concatenate(
        [
            c + rng.normal(0, 0.5 * r, (int(rng.integers(30, 90)), 2))
            for c, r in zip(centres, radii, strict=True)
        ]
    )
    pepper = _with_radius(pepper, rng, 0.006, 0.012)
    return [
        _Layer((0.9, 0.88, 0.86), 0.75 * vis, 0.05, fills=scars),
        _Layer((0.42, 0.46, 0.58), 0.8 * vis, 0.003, dots=pepper),
    ]


_CRITERIA: dict[str, Callable[[_Outline, Rng, int, float], list[_Layer]]] = {
    "PIG": _pigmentation,
    "PN": _pigment_network,
    "DaG": _dots_globules,
    "RS": _regression,
    "BWV": _blue_white_veil,
    "VS": _vascular,
    "STR": _streaks,
}
"""Criteria in drawing order (later ones are drawn on top)."""


def _scene(labels: np.ndarray, streams: dict[str, Rng]) -> _Scene:
    diag = HEADS[0].classes[int(labels[0])]
    style, rng = _STYLES[diag], streams["DIAG"]
    o = _outline(style, rng)
    layers = _diagnosis_extras(diag, o, rng)
    for name, draw in _CRITERIA.items():
        crit = streams[name]
        layers += draw(o, crit, int(labels[HEAD_NAMES.index(name)]), crit.uniform(0.6, 1.0))
    return _Scene(
        outline=o,
        border_blur=rng.uniform(*style.border_blur),
        body_alpha=style.body_alpha,
        centre=_jitter(style.centre, rng),
        edge=_jitter(style.edge, rng),
        mottle=style.mottle * rng.uniform(0.6, 1.2),
        fields=_fields(rng),
        layers=layers,
    )


# --------------------------------------------------------------------------------------------
# Rendering


def _to_px(pts: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Scene points -> fixed-point pixel coordinates for cv2 (``_SHIFT`` fractional bits)."""
    return np.round((pts @ a[:, :2].T + a[:, 2]) * (1 << _SHIFT)).astype(np.int32)


def _blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide blurs go through a downscaled copy to stay cheap."""
    if sigma < 0.3:
        return mask
    if sigma <= 2.5:
        return cv2.GaussianBlur(mask, (0, 0), sigma)
    h, w = mask.shape[:2]
    f = sigma / 2
    small = cv2.resize(
        mask, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), 2.0), (w, h), interpolation=cv2.INTER_LINEAR)


def _coverage(layer: _Layer, a: np.ndarray, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """uint8 coverage of a layer before blurring; strokes thinner than a pixel are fainter."""
    mask = np.zeros(shape, np.uint8)
    if layer.fills:
        cv2.fillPoly(mask, [_to_px(p, a) for p in layer.fills], 255, cv2.LINE_AA, _SHIFT)
    for lines, width in layer.strokes:
        if len(lines):
            px = width * scale
            value = round(255 * min(1.0, px))
            pts = list(_to_px(lines, a))
            cv2.polylines(mask, pts, False, value, max(1, round(px)), cv2.LINE_AA, _SHIFT)
    if len(layer.dots):
        centres = _to_px(layer.dots[:, :2], a).tolist()
        for (x, y), r in zip(centres, (layer.dots[:, 2] * scale).tolist(), strict=True):
            value = round(255 * min(1.0, (r / 0.7) ** 2))
            radius = round(max(r, 0.7) * (1 << _SHIFT))
            cv2.circle(mask, (x, y), radius, value, -1, cv2.LINE_AA, _SHIFT)
    return mask


def _blend(img: np.ndarray, colour: np.ndarray | Colour, alpha: np.ndarray) -> None:
    """In place: ``img = img + alpha * (colour - img)``; colour is RGB or an image."""
    img += alpha[..., None] * (np.asarray(colour, np.float32) - img)


def _draw_layers(
    img: np.ndarray, layers: list[_Layer], a: np.ndarray, scale: float, body: np.ndarray | None
) -> None:
    """Blend layers into ``img`` in place, each only within its own blurred bounding box."""
    h, w = img.shape[:2]
    for layer in layers:
        cover = _coverage(layer, a, scale, (h, w))
        x, y, bw, bh = cv2.boundingRect(cover)
        if bw == 0:
            continue
        sigma = layer.blur * scale
        pad = int(np.ceil(3 * sigma)) + 1 if sigma >= 0.3 else 0
        x0, y0, x1, y1 = (
            max(0, x - pad),
            max(0, y - pad),
            min(w, x + bw + pad),
            min(h, y + bh + pad),
        )
        m = _blur(cover[y0:y1, x0:x1].astype(np.float32) * (layer.alpha / 255), sigma)
        if layer.clip and body is not None:
            m *= body[y0:y1, x0:x1]
        _blend(img[y0:y1, x0:x1], layer.colour, m)


def _render(img: np.ndarray, scene: _Scene, a: np.ndarray) -> None:
    """Draw a scene into ``img`` in place; ``a`` maps lesion units to pixels (2x3, similarity)."""
    scale = float(np.sqrt(abs(np.linalg.det(a[:, :2]))))
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * _EXTENT @ a[:, :2].T + a[:, 2]
    h, w = img.shape[:2]
    x0, y0 = np.clip(np.floor(corners.min(0)).astype(int) - 2, 0, [w, h])
    x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int) + 2, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    a = a - np.array([[0, 0, x0], [0, 0, y0]])
    shape = roi.shape[:2]
    body = _coverage(_Layer((0, 0, 0), 1.0, fills=[scene.outline.polygon()]), a, scale, shape)
    body = _blur(body.astype(np.float32) * (1 / 255), scene.border_blur * scale)
    step = 2 * _EXTENT / (_GRID - 1)
    grid_to_px = a @ np.array([[step, 0, -_EXTENT], [0, step, -_EXTENT], [0, 0, 1]])
    fields = cv2.warpAffine(
        scene.fields,
        grid_to_px,
        (shape[1], shape[0]),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REPLICATE,
    )
    centre, edge = np.asarray(scene.centre, np.float32), np.asarray(scene.edge, np.float32)
    base = edge + (centre - edge) * np.clip(fields[..., :1], 0, 1)
    base *= 1 + scene.mottle * (fields[..., 1:] - 0.5)
    _blend(roi, base, body * scene.body_alpha)
    _draw_layers(roi, scene.layers, a, scale, body)


def _placement(scale: float, angle: float, mirror: bool, centre: tuple[float, float]) -> np.ndarray:
    """2x3 map from lesion units to pixels: mirror, rotate, scale, translate."""
    lin = scale * _rot(angle) @ np.diag([-1.0 if mirror else 1.0, 1.0])
    return np.column_stack([lin, centre])


# --------------------------------------------------------------------------------------------
# Cameras: skin, lighting, hair, rulers, optics


def _skin(shape: tuple[int, int], tone: np.ndarray, rng: Rng, texture: float) -> np.ndarray:
    """Skin background with smooth blotchy variation."""
    h, w = shape
    noise = cv2.resize(
        rng.uniform(-1, 1, (5, 7)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    return tone.astype(np.float32) * (1 + texture * noise)[..., None]


def _hairs(shape: tuple[int, int], rng: Rng, n: int, width: float, alpha: float) -> _Layer:
    """``n`` curved hair strands in pixel coordinates."""
    h, w = shape
    start = rng.uniform([0, 0], [w, h], (n, 2))
    end = start + rng.uniform(0.3, 1.0, (n, 1)) * w * _directions(rng, n)
    colour = _jitter((0.1, 0.07, 0.05), rng, 0.3)
    return _Layer(
        colour, alpha, 0.0, clip=False, strokes=[(_wiggle(start, end, 12, 0.15, 0.0, rng), width)]
    )


def _ruler(shape: tuple[int, int], rng: Rng) -> _Layer:
    """A scale bar with ticks along the top or bottom, as dermoscopes often print."""
    h, w = shape
    y = h * (rng.uniform(0.1, 0.18) if rng.random() < 0.5 else rng.uniform(0.82, 0.9))
    step = h * rng.uniform(0.025, 0.04)
    xs = np.arange(w * 0.3, w * 0.7, step)
    tick = np.where(np.arange(len(xs)) % 5 == 0, 2.0, 1.0) * h * 0.025 * np.sign(h / 2 - y)
    ticks = np.stack(
        [np.column_stack([xs, np.full_like(xs, y)]), np.column_stack([xs, y + tick])], 1
    )
    bar = np.array([[[xs[0], y], [xs[-1], y]]])
    return _Layer(
        (0.05, 0.05, 0.05),
        0.85,
        0.0,
        clip=False,
        strokes=[(np.concatenate([ticks, bar]), max(1.0, h / 256))],
    )


def _radial(shape: tuple[int, int], centre: tuple[float, float]) -> np.ndarray:
    """Distance of every pixel from ``centre``, in pixels."""
    h, w = shape
    return np.hypot(
        np.arange(w, dtype=np.float32)[None] - centre[0],
        np.arange(h, dtype=np.float32)[:, None] - centre[1],
    )


def _finish(img: np.ndarray, rng: Rng, noise: float) -> np.ndarray:
    """Sensor noise and conversion to uint8 RGB."""
    img += (noise * rng.standard_normal(img.shape[:2], dtype=np.float32))[..., None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _aperture(shape: tuple[int, int], rng: Rng) -> np.ndarray:
    """Transmission of a dermoscope's round field of view and dark frame (25 px at 768 wide)."""
    h, w = shape
    border = 25 / 768 * w
    x, y = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    frame = np.minimum(np.minimum(x, w - 1 - x)[None], np.minimum(y, h - 1 - y)[:, None])
    circle = (rng.uniform(0.48, 0.58) * w - _radial(shape, (w / 2, h / 2))) / border
    edge = (frame - rng.uniform(0.6, 1.0) * border) / (0.25 * border)
    return np.clip(np.minimum(circle, edge), 0, 1)


def _dermoscopic(
    scene: _Scene, tone: np.ndarray, size: int, rng: Rng
) -> tuple[np.ndarray, np.ndarray]:
    """Close-up through a dermoscope: big lesion, hair, ruler, bright centre, dark round frame.

    Returns the image and the lesion placement (2x3, lesion units -> pixels).
    """
    shape = image_shape(size)
    h, w = shape
    img = _skin(shape, tone * np.array([1.0, 0.94, 0.94]), rng, 0.05)
    scale = size * rng.uniform(0.22, 0.36)
    centre = (w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2 + rng.uniform(-0.08, 0.08) * h)
    place = _placement(scale, rng.uniform(0, 2 * np.pi), rng.random() < 0.5, centre)
    _render(img, scene, place)
    overlays = []
    if rng.random() < 0.6:
        width = size / 256 * rng.uniform(0.8, 1.8)
        overlays.append(_hairs(shape, rng, int(rng.integers(1, 9)), width, 0.85))
    if rng.random() < 0.2:
        overlays.append(_ruler(shape, rng))
    _draw_layers(img, overlays, np.eye(2, 3), 1.0, None)
    light_centre = (w / 2 + rng.normal(0, 0.05 * w), h / 2 + rng.normal(0, 0.05 * h))
    d = _radial(shape, light_centre) / (w / 2)
    img *= (rng.uniform(0.85, 1.08) * (1 - rng.uniform(0.05, 0.25) * d * d))[..., None]
    img *= np.asarray(_jitter((1.0, 1.0, 1.0), rng, 0.02), np.float32)
    _blend(img, (0.02, 0.02, 0.02), 1 - _aperture(shape, rng))
    return _finish(img, rng, 0.012), place


def _clinical(scene: _Scene, tone: np.ndarray, size: int, rng: Rng, derm: np.ndarray) -> np.ndarray:
    """The same lesion photographed from further away: small, soft, other light and colour cast.

    ``derm`` is the dermoscopic placement: the photo shrinks it and turns it slightly.
    """
    shape = image_shape(size)
    h, w = shape
    img = _skin(shape, tone * _jitter((1.0, 1.0, 1.0), rng, 0.06), rng, 0.08)
    overlays = [_hairs(shape, rng, int(rng.integers(0, 6)), size / 256 * 0.6, 0.45)]
    freckles = rng.uniform([0, 0], [w, h], (int(rng.integers(0, 6)), 2))
    overlays.append(
        _Layer(
            _jitter(_BROWN, rng),
            rng.uniform(0.3, 0.6),
            0.5,
            clip=False,
            dots=_with_radius(freckles, rng, 0.004 * size, 0.01 * size),
        )
    )
    _draw_layers(img, overlays, np.eye(2, 3), 1.0, None)
    linear = derm[:, :2] @ _rot(rng.normal(0, 0.3)) * rng.uniform(0.3, 0.45)
    _render(img, scene, np.column_stack([linear, rng.uniform(0.3, 0.7, 2) * (w, h)]))
    phi = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(phi) * (np.arange(w, dtype=np.float32)[None] / w - 0.5) + np.sin(phi) * (
        np.arange(h, dtype=np.float32)[:, None] / h - 0.5
    )
    img *= (rng.uniform(0.8, 1.1) * (1 + rng.uniform(0.1, 0.4) * ramp))[..., None]
    img = cv2.GaussianBlur(img, (0, 0), size / 256 * rng.uniform(0.6, 1.2))
    return _finish(img, rng, rng.uniform(0.012, 0.03))


def paint_pair(
    labels: np.ndarray, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(dermoscopic, clinical) RGB uint8 images [size, round(1.5 size), 3] of one lesion.

    ``labels`` holds the 8 class indices in ``HEAD_NAMES`` order. Each head and each camera
    draws from its own stream spawned from ``rng``, so changing one label leaves the rest alone.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(HEAD_NAMES),):
        raise ValueError(
            f"expected {len(HEAD_NAMES)} class indices in {HEAD_NAMES} order, got {labels}"
        )
    names = (*HEAD_NAMES, "skin", "derm", "clinic")
    streams = dict(zip(names, rng.spawn(len(names)), strict=True))
    scene = _scene(labels, streams)
    tone = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * streams["skin"].beta(1.2, 2.2)
    derm, place = _dermoscopic(scene, tone, size, streams["derm"])
    clinic = _clinical(scene, tone, size, streams["clinic"], place)
    return derm, clinic
