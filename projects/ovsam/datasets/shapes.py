"""Deterministic synthetic instance-segmentation data ("shapes").

No real dataset can be downloaded in CI, so the tiny training pipeline and the
tests run on procedurally drawn shapes instead. :func:`generate_shapes_dataset`
writes, under ``out_dir``::

    train/000000000001.jpg ...          # JPEG, like COCO
    val/000000000001.png ...            # lossless, so evaluation is exact
    annotations/instances_train.json    # COCO instance format
    annotations/instances_val.json
    sa1b/sa_1.jpg + sa1b/sa_1.json ...  # SA-1B layout (class-agnostic)
    sa1b/train.txt                      # basenames WITHOUT extension ("sa_1")

Design choices:

* Segmentations are always compressed COCO RLE (``counts`` as ``str``), never
  polygons: visible masks of occluded shapes and rings have holes and can be
  split into pieces, which COCO polygons cannot express (pycocotools unions
  polygons). ``area`` is the exact pixel count and ``bbox`` the tight box of
  the decoded mask. In mmdet, load them with ``LoadAnnotations(with_mask=True,
  poly2mask=True)`` (the default); ``poly2mask=False`` marks RLE masks ignored.
* Size, rotation and texture are drawn independently of the class. Colour
  depends on ``colour_mode``: ``'class'`` (default) gives every class its own
  hue band (36 degrees apart, +-8 degrees of jitter; saturation and brightness
  random), so both colour and outline identify it; ``'random'`` draws colours
  independently of the class, so only the outline does. The main job
  (``tools/tiny_pipeline.py``) uses ``'random'``: its stage 0 learns outlines
  from object crops and regions of whole scenes
  (:func:`ovsam.training.train_clip_on_regions`); ``'class'`` stays this
  function's default, the easier data of earlier versions.
* Later shapes occlude earlier ones; annotations hold the visible mask. A
  placement that would hide more than ``max_occlusion`` of an earlier shape is
  retried, so no shape is reduced to an ambiguous fragment (a circle with a bite
  taken out would look like a crescent); instances whose visible area is below
  ``min_visible_area`` pixels are dropped from the annotations.
* Every image has its own generator seeded by ``(seed, split, index)``, so an
  image does not change when the number of images in any split changes.

Class indices below (``SHAPE_BASE_CLASSES`` / ``SHAPE_NOVEL_CLASSES``) are
0-based into ``SHAPE_CLASSES``; COCO category ids are 1-based (index + 1).
"""
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from pycocotools import mask as mask_util

from ..fileio import atomic_save_bytes, atomic_save_json, atomic_save_text

__all__ = [
    'SHAPE_CLASSES', 'SHAPE_BASE_CLASSES', 'SHAPE_NOVEL_CLASSES', 'EXTRA_SHAPES', 'GENERATOR_SETTINGS',
    'BACKGROUNDS', 'TEXTURES', 'render_scene', 'generate_shapes_dataset', 'generator_setting', 'mask_to_rle'
]

# Synonyms are comma-separated, as ovsam.vocabulary.split_synonyms parses them.
SHAPE_CLASSES = (
    'circle,disc',
    'square',
    'triangle',
    'star',
    'ring,annulus',
    'cross,plus sign',
    'ellipse,oval',
    'hexagon',
    'crescent,moon',
    'heart',
)
SHAPE_BASE_CLASSES = (0, 1, 2, 4, 5, 6, 7)
SHAPE_NOVEL_CLASSES = (3, 8, 9)  # star, crescent, heart

# Split ids feed the per-image seed; fixed so outputs never depend on order.
_SPLIT_SEED = {'train': 0, 'val': 1, 'sa1b': 2, 'boxes': 3, 'image_level': 4}

# Object diameter range in pixels at 256 x 256; scaled with the image size.
# The smallest object spans 2.5 cells of a 256-px SAM's 16-px embedding grid
# (a 40/256 object seen by SAM at 1024 px spans 10 cells).
_DIAMETER_RANGE_256 = (40.0, 120.0)
_MIN_COLOUR_DIST = 80.0  # RGB distance from what lies underneath
_COLOUR_MODES = ('class', 'random')
BACKGROUNDS = ('flat', 'gradient', 'noise', 'stripes', 'speckle', 'checker', 'dots')
TEXTURES = ('flat', 'stripes', 'noise', 'gradient', 'speckle', 'checker', 'dots')
# Named appearance settings of the generator. 'default' is the training data;
# 'shifted' changes object sizes and counts, textures and backgrounds, and is
# only ever used to measure how a trained model generalises.
GENERATOR_SETTINGS = {
    # Training sees low- and high-frequency backgrounds and fills (stripes,
    # speckle: blocky colour noise), so neither a busy background nor a
    # patterned fill is new to a model; 'checker' and 'dots' stay unseen.
    'default': dict(diameter_range=_DIAMETER_RANGE_256, min_objects=1, max_objects=5,
                    backgrounds=('flat', 'gradient', 'noise', 'stripes', 'speckle'),
                    textures=('flat', 'stripes', 'noise', 'gradient', 'speckle')),
    'shifted': dict(diameter_range=(32.0, 144.0), min_objects=2, max_objects=7,
                    backgrounds=('checker', 'dots', 'noise'), textures=('checker', 'dots', 'flat')),
}
_HUE_JITTER = 8.0  # degrees either side of a class's hue
_PLACEMENT_TRIES = 20

Polygons = List[Tuple[np.ndarray, int]]  # (unit-scale (N, 2) outline, fill value)


# --------------------------------------------------------------------------
# Outlines in unit coordinates (roughly inside [-1, 1]^2, y pointing down).
# Each returns polygons to fill in order; value 0 cuts a hole.
# --------------------------------------------------------------------------
def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _circle(rng) -> Polygons:
    return [(_regular(96), 1)]


def _square(rng) -> Polygons:
    s = 0.8
    return [(np.array([[-s, -s], [s, -s], [s, s], [-s, s]]), 1)]


def _triangle(rng) -> Polygons:
    # Shift down so the centroid, not the circumcentre, sits at the origin.
    return [(_regular(3) + [0.0, 0.25], 1)]


def _star(rng) -> Polygons:
    inner = rng.uniform(0.38, 0.5)
    pts = _regular(10)
    pts[1::2] *= inner
    return [(pts, 1)]


def _ring(rng) -> Polygons:
    return [(_regular(96), 1), (_regular(96, rng.uniform(0.45, 0.65)), 0)]


def _cross(rng) -> Polygons:
    a = rng.uniform(0.25, 0.35)
    pts = [(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1),
           (-a, -1), (-a, -a), (-1, -a), (-1, a), (-a, a), (-a, 1)]
    return [(np.array(pts, dtype=np.float64), 1)]


def _ellipse(rng) -> Polygons:
    # Minor/major <= 0.62 keeps ellipses visibly different from circles.
    pts = _regular(96)
    pts[:, 1] *= rng.uniform(0.4, 0.62)
    return [(pts, 1)]


def _hexagon(rng) -> Polygons:
    return [(_regular(6), 1)]


def _crescent(rng) -> Polygons:
    hole = _regular(96, rng.uniform(0.8, 0.9)) + [rng.uniform(0.35, 0.5), 0.0]
    return [(_regular(96), 1), (hole, 0)]


def _heart(rng) -> Polygons:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    # Flip y (image y points down) and centre the curve's vertical extent.
    return [(np.stack([x, -(y + 2.5)], axis=1) / 16.0, 1)]


_OUTLINES: Dict[str, Callable[[np.random.Generator], Polygons]] = {
    'circle': _circle, 'square': _square, 'triangle': _triangle, 'star': _star,
    'ring': _ring, 'cross': _cross, 'ellipse': _ellipse, 'hexagon': _hexagon,
    'crescent': _crescent, 'heart': _heart,
}


# Outlines outside the class list: drawn only into the class-agnostic SA-1B
# style split, so the tiny SAM of stage -1 learns to segment shapes that no
# class names (as SAM on SA-1B does), and CLIP2SAM starts from a decoder that
# segments novel shapes too.
def _pentagon(rng) -> Polygons:
    return [(_regular(5), 1)]


def _diamond(rng) -> Polygons:
    a = rng.uniform(0.45, 0.7)
    return [(np.array([[0.0, -1.0], [a, 0.0], [0.0, 1.0], [-a, 0.0]]), 1)]


def _arrow(rng) -> Polygons:
    t = rng.uniform(0.2, 0.35)
    return [(np.array([[-1, -t], [0.1, -t], [0.1, -0.7], [1, 0], [0.1, 0.7], [0.1, t], [-1, t]],
                      dtype=np.float64), 1)]


def _blob(rng) -> Polygons:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 5):
        r += rng.uniform(0.05, 0.18) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r /= r.max()
    return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 1)]


def _ell(rng) -> Polygons:
    a = rng.uniform(0.3, 0.5)
    return [(np.array([[-1, -1], [-1 + 2 * a, -1], [-1 + 2 * a, 1 - 2 * a], [1, 1 - 2 * a], [1, 1], [-1, 1]],
                      dtype=np.float64) * 0.85, 1)]


def _trapezoid(rng) -> Polygons:
    top = rng.uniform(0.3, 0.6)
    return [(np.array([[-top, -0.7], [top, -0.7], [1.0, 0.7], [-1.0, 0.7]]), 1)]


EXTRA_SHAPES = ('pentagon', 'diamond', 'arrow', 'blob', 'l-shape', 'trapezoid')
_EXTRA_OUTLINES: Dict[str, Callable[[np.random.Generator], Polygons]] = {
    'pentagon': _pentagon, 'diamond': _diamond, 'arrow': _arrow, 'blob': _blob, 'l-shape': _ell,
    'trapezoid': _trapezoid,
}


def _outline(key: str) -> Callable[[np.random.Generator], Polygons]:
    return _OUTLINES[key] if key in _OUTLINES else _EXTRA_OUTLINES[key]


def _shape_key(name: str) -> str:
    """Outline key of a class name: its first synonym, e.g. 'ring,annulus' -> 'ring'."""
    key = name.split(',')[0].strip().lower()
    if key not in _OUTLINES and key not in _EXTRA_OUTLINES:
        raise ValueError(f'no outline for class {name!r}; first synonym must be one of '
                         f'{sorted(_OUTLINES) + sorted(_EXTRA_OUTLINES)}')
    return key


def _resolve_classes(classes: Optional[Sequence[Union[str, int]]]) -> List[str]:
    """Class names to generate: names (any synonym string) or indices into SHAPE_CLASSES."""
    if classes is None:
        return list(SHAPE_CLASSES)
    names = [SHAPE_CLASSES[c] if isinstance(c, (int, np.integer)) else str(c) for c in classes]
    if not names:
        raise ValueError('classes is empty')
    keys = [_shape_key(n) for n in names]
    extra = [n for n, k in zip(names, keys) if k not in _OUTLINES]
    if extra:
        raise ValueError(f'{extra} are outlines outside the class list (EXTRA_SHAPES), drawn only into the '
                         f'class-agnostic SA-1B split; classes must be among {sorted(_OUTLINES)}')
    if len(set(keys)) != len(keys):
        raise ValueError(f'classes {names} name the same shape twice')
    return names


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------
def _random_colour(rng) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _pattern(rng, kind: str, ys: np.ndarray, xs: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """(N, 3) values of a two-shade pattern at pixels (ys, xs): 'checker' or 'dots'."""
    other = np.clip(colour + rng.uniform(-90, 90, size=3), 0, 255).astype(np.float32)
    period = rng.uniform(6, 16)
    ang = rng.uniform(0, np.pi / 2)
    u = (xs * np.cos(ang) + ys * np.sin(ang)) / period
    v = (-xs * np.sin(ang) + ys * np.cos(ang)) / period
    if kind == 'checker':
        on = (np.floor(u).astype(np.int64) + np.floor(v).astype(np.int64)) % 2 == 0
    else:  # dots
        on = (u - np.round(u)) ** 2 + (v - np.round(v)) ** 2 < rng.uniform(0.04, 0.12)
    return np.where(on[:, None], colour, other)


def _stripes(rng, ys: np.ndarray, xs: np.ndarray, colour: np.ndarray, spread: float = 70.0) -> np.ndarray:
    """(N, 3) two-shade stripes at a random angle and period; the second
    shade is near ``colour``, so the stripes contrast with whatever
    ``colour`` was checked against."""
    other = np.clip(colour + rng.uniform(-spread, spread, size=3), 0, 255).astype(np.float32)
    ang = rng.uniform(0, np.pi)
    period = rng.uniform(4, 14)
    phase = (xs * np.cos(ang) + ys * np.sin(ang)) / period + rng.uniform(0, 1)
    return np.where(((phase % 1.0) < 0.5)[:, None], colour, other)


def _speckle(rng, ys: np.ndarray, xs: np.ndarray, colour: np.ndarray, spread: float = 60.0) -> np.ndarray:
    """(N, 3) blocky colour noise around ``colour``: random shades on square
    cells of 2-6 px (high-frequency, unlike the smooth 'noise')."""
    cell = rng.uniform(2, 6)
    iy, ix = (ys / cell).astype(np.int64), (xs / cell).astype(np.int64)
    iy -= iy.min()
    ix -= ix.min()
    shades = rng.uniform(-spread, spread, size=(int(iy.max()) + 1, int(ix.max()) + 1, 3)).astype(np.float32)
    return np.clip(colour + shades[iy, ix], 0, 255)


def _background(rng, h: int, w: int, kinds: Sequence[str] = GENERATOR_SETTINGS['default']['backgrounds']) -> np.ndarray:
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == 'flat':
        img = np.broadcast_to(_random_colour(rng), (h, w, 3)).copy()
    elif kind in ('checker', 'dots', 'stripes', 'speckle'):
        ys, xs = (v.ravel() for v in np.mgrid[0:h, 0:w].astype(np.float32))
        colour = _random_colour(rng)
        if kind == 'stripes':
            img = _stripes(rng, ys, xs, colour, spread=90.0)
        elif kind == 'speckle':
            img = _speckle(rng, ys, xs, colour, spread=50.0)
        else:
            img = _pattern(rng, kind, ys, xs, colour)
        img = img.reshape(h, w, 3)
    elif kind == 'gradient':  # linear gradient at a random angle
        c0, c1 = _random_colour(rng), _random_colour(rng)
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.arange(w, dtype=np.float32)[None] * np.cos(ang)
             + np.arange(h, dtype=np.float32)[:, None] * np.sin(ang))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 + t[..., None] * (c1 - c0)
    elif kind == 'noise':  # smooth colour noise: a small random grid upsampled
        cells = int(rng.integers(2, 9))
        grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.float32)
        # Random contrast: full-range noise alone would make every scene loud.
        grid = grid.mean((0, 1)) + rng.uniform(0.3, 1.0) * (grid - grid.mean((0, 1)))
        img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    else:
        raise ValueError(f'unknown background {kind!r}; choose from {BACKGROUNDS}')
    if rng.random() < 0.3:
        # Unlabelled clutter so that "any edge" is not a shape cue.
        for _ in range(int(rng.integers(1, 6))):
            p0 = tuple(int(v) for v in rng.integers(0, [w, h]))
            p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
            cv2.line(img, p0, p1, _random_colour(rng).tolist(), int(rng.integers(1, 3)))
    return img.astype(np.float32)


def _texture(rng, colour: np.ndarray, ys: np.ndarray, xs: np.ndarray,
             kinds: Sequence[str] = GENERATOR_SETTINGS['default']['textures']) -> np.ndarray:
    """(N, 3) fill of the pixels at (ys, xs), independent of class: one of
    ``kinds`` (``TEXTURES``)."""
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == 'flat':
        return np.broadcast_to(colour, (len(ys), 3))
    if kind in ('checker', 'dots'):
        return _pattern(rng, kind, ys, xs, colour)
    if kind == 'noise':
        sigma = rng.uniform(8, 25)
        return colour + sigma * rng.standard_normal((len(ys), 1), dtype=np.float32)
    if kind == 'stripes':
        return _stripes(rng, ys, xs, colour)
    if kind == 'speckle':
        return _speckle(rng, ys, xs, colour)
    if kind == 'gradient':  # the base colour fading to a nearby shade across the object
        other = np.clip(colour + rng.uniform(-90, 90, size=3), 0, 255).astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        t = xs * np.cos(ang) + ys * np.sin(ang)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return colour + t[:, None] * (other - colour)
    raise ValueError(f'unknown texture {kind!r}; choose from {TEXTURES}')


def _rasterise(polys: Polygons, center: np.ndarray, radius: float, angle: float,
               h: int, w: int) -> np.ndarray:
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mask = np.zeros((h, w), np.uint8)
    for pts, value in polys:
        xy = pts @ rot.T * radius + center
        # 4 fractional bits: sub-pixel vertex placement, still aliased (exact masks).
        cv2.fillPoly(mask, [np.round(xy * 16).astype(np.int32)], int(value),
                     lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def class_hue(name: str) -> float:
    """Hue in degrees of a class in ``colour_mode='class'``: fixed by its outline,
    so a class keeps its colour whatever subset of classes is generated."""
    key = _shape_key(name)
    if key not in _OUTLINES:
        raise ValueError(f'{name!r} is not a class outline; it has no class hue')
    return 360.0 * list(_OUTLINES).index(key) / len(_OUTLINES)


def _hue_colour(rng, hue: float) -> np.ndarray:
    """A BGR colour of hue ``hue`` +- jitter, saturation and value in [0.6, 1]."""
    h = (hue + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 360.0
    # OpenCV's float HSV: H in [0, 360), S and V in [0, 1].
    hsv = np.array([[[h, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)]]], np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0] * 255.0


def _pick_colour(rng, canvas: np.ndarray, label: np.ndarray, mask: np.ndarray,
                 hue: Optional[float] = None) -> np.ndarray:
    """A colour (of ``hue`` if given, else any) far from every region
    (background, earlier shapes) it covers."""
    under_lbl = label[mask]
    under_rgb = canvas[mask]
    means = [under_rgb[under_lbl == lbl].mean(0) for lbl in np.unique(under_lbl)]
    best, best_dist = None, -1.0
    for _ in range(20):
        colour = _random_colour(rng) if hue is None else _hue_colour(rng, hue)
        dist = min(float(np.linalg.norm(colour - m)) for m in means)
        if dist >= _MIN_COLOUR_DIST:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


def _check_kinds(kinds: Sequence[str], allowed: Sequence[str], what: str) -> None:
    if isinstance(kinds, str) or not len(kinds) or any(k not in allowed for k in kinds):
        raise ValueError(f'{what} must be a non-empty sequence of {allowed}, got {kinds!r}')


def render_scene(rng: np.random.Generator,
                 shapes: Sequence[str],
                 image_size: int = 256,
                 min_objects: int = 1,
                 max_objects: int = 5,
                 min_visible_area: int = 32,
                 max_occlusion: float = 0.5,
                 colour_mode: str = 'class',
                 diameter_range: Tuple[float, float] = _DIAMETER_RANGE_256,
                 backgrounds: Sequence[str] = GENERATOR_SETTINGS['default']['backgrounds'],
                 textures: Sequence[str] = GENERATOR_SETTINGS['default']['textures']) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw one image of random shapes.

    Args:
        rng: source of all randomness.
        shapes: class names (first synonym selects the outline; the names in
            ``EXTRA_SHAPES`` are outlines outside the class list).
        image_size: side of the square image.
        colour_mode: ``'class'`` (each class its own hue band) or ``'random'``
            (colour independent of class; see the module docstring).
        diameter_range: object diameters in pixels at 256 x 256 (scaled with
            ``image_size``).
        backgrounds, textures: the kinds drawn from (``BACKGROUNDS``,
            ``TEXTURES``); see ``GENERATOR_SETTINGS``.

    Returns:
        ``(image, instances)``: a uint8 (H, W, 3) BGR image and a list of
        ``(class index into shapes, visible bool mask)`` in drawing order, only
        for instances with at least ``min_visible_area`` visible pixels.
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f'need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}')
    if colour_mode not in _COLOUR_MODES:
        raise ValueError(f'colour_mode must be one of {_COLOUR_MODES}, got {colour_mode!r}')
    _check_kinds(backgrounds, BACKGROUNDS, 'backgrounds')
    _check_kinds(textures, TEXTURES, 'textures')
    lo, hi = (float(d) * image_size / 256.0 for d in diameter_range)
    if not 0 < lo <= hi:
        raise ValueError(f'diameter_range must be (min, max) with 0 < min <= max, got {diameter_range}')
    keys = [_shape_key(s) for s in shapes]
    # outlines outside the class list have no class hue: random colours
    hues = [class_hue(s) if colour_mode == 'class' and k in _OUTLINES else None for s, k in zip(shapes, keys)]
    h = w = int(image_size)
    canvas = _background(rng, h, w, backgrounds)
    label = np.zeros((h, w), np.int32)  # 0 = background, k = k-th drawn shape
    counts = [h * w]  # visible pixels per label
    full_area = [0]
    classes: List[int] = []

    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        cls = int(rng.integers(len(keys)))
        polys = _outline(keys[cls])(rng)
        for _try in range(_PLACEMENT_TRIES):
            radius = rng.uniform(lo, hi) / 2
            # Centres may sit near the border: shapes cut by the frame are realistic.
            center = rng.uniform(0.6 * radius, [w - 0.6 * radius, h - 0.6 * radius])
            mask = _rasterise(polys, center, radius, rng.uniform(0, 2 * np.pi), h, w)
            area = int(mask.sum())
            if area < 2 * min_visible_area:
                continue
            lost = np.bincount(label[mask], minlength=len(counts))
            left = np.asarray(counts) - lost
            if all(left[k] >= (1 - max_occlusion) * full_area[k] for k in range(1, len(counts))):
                break
        else:
            continue  # no acceptable placement: skip this object
        colour = _pick_colour(rng, canvas, label, mask, hues[cls])
        ys, xs = np.nonzero(mask)
        canvas[ys, xs] = _texture(rng, colour, ys.astype(np.float32), xs.astype(np.float32), textures)
        counts = list(left) + [area]
        full_area.append(area)
        classes.append(cls)
        label[mask] = len(counts) - 1

    # Mild camera-like degradation; masks stay exact.
    if rng.random() < 0.5:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.4, 0.9))
    canvas += rng.uniform(0, 6) * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    instances = [(cls, label == k) for k, cls in enumerate(classes, start=1)
                 if counts[k] >= min_visible_area]
    return image, instances


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------
def mask_to_rle(mask: np.ndarray) -> Dict:
    """Compressed COCO RLE of a bool (H, W) mask, ``counts`` as str (JSON-safe)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(rle['size'][0]), int(rle['size'][1])],
            'counts': rle['counts'].decode('ascii')}


def _bbox_xywh(mask: np.ndarray) -> List[int]:
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_SEED[split], int(index)])


def _write_image(path: str, image: np.ndarray) -> None:
    ext = osp.splitext(path)[1]
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == '.jpg' else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise IOError(f'could not encode {path}')
    atomic_save_bytes(path, buf.tobytes())


def _dump_json(obj, path: str) -> None:
    atomic_save_json(path, obj, separators=(',', ':'))


def _write_coco_split(out_dir: str, split: str, ext: str, num_images: int, names: List[str],
                      seed: int, render_kw: Dict, draw: Optional[List[str]] = None, masks: bool = True) -> Dict:
    """One COCO split. ``draw``: the classes drawn (default: all ``names``;
    categories are always all ``names``); ``masks=False`` writes boxes and
    labels only (detection data)."""
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    drawn = names if draw is None else list(draw)
    for i in range(num_images):
        image_id = i + 1
        image, instances = render_scene(_image_rng(seed, split, i), drawn, **render_kw)
        instances = [(names.index(drawn[cls]), mask) for cls, mask in instances]
        file_name = f'{image_id:012d}.{ext}'
        _write_image(osp.join(img_dir, file_name), image)
        h, w = image.shape[:2]
        images.append({'id': image_id, 'file_name': file_name, 'height': h, 'width': w})
        for cls, mask in instances:
            annotations.append({
                'id': len(annotations) + 1,
                'image_id': image_id,
                'category_id': cls + 1,
                'segmentation': mask_to_rle(mask),
                'area': int(mask.sum()),
                'bbox': _bbox_xywh(mask),
                'iscrowd': 0,
            })
            if not masks:
                del annotations[-1]['segmentation']
    novel = {_shape_key(SHAPE_CLASSES[i]) for i in SHAPE_NOVEL_CLASSES}
    categories = [{'id': k + 1, 'name': n, 'supercategory': 'shape',
                   'split': 'novel' if _shape_key(n) in novel else 'base'}
                  for k, n in enumerate(names)]
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    _dump_json({
        'info': {'description': f'synthetic shapes ({split})', 'seed': int(seed),
                 'colour_mode': render_kw['colour_mode'],
                 'setting': {k: render_kw[k] for k in GENERATOR_SETTINGS['default']}},
        'licenses': [],
        'images': images,
        'annotations': annotations,
        'categories': categories,
    }, ann_file)
    return {'img_dir': img_dir, 'ann_file': ann_file, 'num_images': num_images,
            'num_instances': len(annotations)}


def _write_sa1b(out_dir: str, num_images: int, names: List[str], seed: int,
                render_kw: Dict) -> Dict:
    """SA-1B layout (image + per-image JSON + split list), plus the same masks
    as one class-agnostic COCO file (``annotations/instances_sa1b.json``, one
    category ``object``) on which the tiny SAM of stage -1 is trained."""
    sa_dir = osp.join(out_dir, 'sa1b')
    os.makedirs(sa_dir, exist_ok=True)
    basenames, images, coco_anns = [], [], []
    for i in range(num_images):
        image_id = i + 1
        base = f'sa_{image_id}'
        image, instances = render_scene(_image_rng(seed, 'sa1b', i), names, **render_kw)
        _write_image(osp.join(sa_dir, base + '.jpg'), image)
        h, w = image.shape[:2]
        anns = []
        for cls, mask in instances:
            # SA-1B's prompt point: take the most interior pixel (deterministic).
            dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)
            py, px = np.unravel_index(int(np.argmax(dist)), dist.shape)
            rle, bbox, area = mask_to_rle(mask), _bbox_xywh(mask), int(mask.sum())
            anns.append({
                'id': len(anns) + 1,
                'segmentation': rle,
                'bbox': bbox,
                'area': area,
                'predicted_iou': 1.0,
                'stability_score': 1.0,
                'point_coords': [[float(px - 1), float(py - 1)]],
                'crop_box': [0, 0, w, h],
            })
            coco_anns.append({'id': len(coco_anns) + 1, 'image_id': image_id, 'category_id': 1,
                              'segmentation': rle, 'area': area, 'bbox': bbox, 'iscrowd': 0})
        _dump_json({'image': {'image_id': image_id, 'file_name': base + '.jpg',
                              'height': h, 'width': w},
                    'annotations': anns}, osp.join(sa_dir, base + '.json'))
        images.append({'id': image_id, 'file_name': base + '.jpg', 'height': h, 'width': w})
        basenames.append(base)
    list_file = osp.join(sa_dir, 'train.txt')
    atomic_save_text(list_file, ''.join(b + '\n' for b in basenames))
    ann_file = osp.join(out_dir, 'annotations', 'instances_sa1b.json')
    _dump_json({'info': {'description': 'synthetic shapes, class-agnostic (SA-1B style)', 'seed': int(seed),
                         'shapes': [_shape_key(n) for n in names]},
                'licenses': [], 'images': images, 'annotations': coco_anns,
                'categories': [{'id': 1, 'name': 'object', 'supercategory': 'object'}]}, ann_file)
    return {'img_dir': sa_dir, 'list_file': list_file, 'ann_file': ann_file, 'num_images': num_images,
            'num_masks': len(coco_anns)}


def _write_image_level(out_dir: str, per_class: int, names: List[str], seed: int, render_kw: Dict,
                       diameter_range: Tuple[float, float] = (140.0, 230.0)) -> Dict:
    """Image-level data in class folders (the ImageNet layout):
    ``image_level/<outline>/<k>.jpg``, one object per image, no annotation but
    the folder; ``image_level/classes.txt`` names the folders' classes (sorted
    folder order, synonyms kept). Object-centric like ImageNet's photos: the
    object spans ``diameter_range`` pixels (at 256), most of the image."""
    root = osp.join(out_dir, 'image_level')
    kw = dict(render_kw, min_objects=1, max_objects=1, diameter_range=tuple(diameter_range))
    folders = sorted((_shape_key(n), n) for n in names)
    count = 0
    for key, name in folders:
        os.makedirs(osp.join(root, key), exist_ok=True)
        k = 0
        while k < per_class:
            image, instances = render_scene(_image_rng(seed, 'image_level', count), [name], **kw)
            count += 1
            if instances:  # the one object was placed and stayed visible
                _write_image(osp.join(root, key, f'{k:06d}.jpg'), image)
                k += 1
    classes_file = osp.join(root, 'classes.txt')
    atomic_save_text(classes_file, ''.join(n + '\n' for _, n in folders))
    return {'img_dir': root, 'classes_file': classes_file, 'num_images': per_class * len(folders)}


def _write_cotrain_splits(out_dir: str, names: List[str], cotrain: Dict, num_train: int, seed: int,
                          render_kw: Dict) -> Dict:
    """The co-training variant (see ``generate_shapes_dataset(cotrain=...)``)."""
    unknown = set(cotrain) - {'box_only', 'image_level', 'num_boxes', 'num_image_level', 'image_level_diameter'}
    if unknown:
        raise ValueError(f'cotrain: unknown keys {sorted(unknown)}; use box_only, image_level, num_boxes, '
                         'num_image_level, image_level_diameter')
    box_only = _resolve_classes(cotrain['box_only']) if cotrain.get('box_only') else []
    image_level = _resolve_classes(cotrain.get('image_level')) if cotrain.get('image_level') else []
    for group in (box_only, image_level):
        missing = [n for n in group if n not in names]
        if missing:
            raise ValueError(f'cotrain: classes {missing} are not among the generated classes {names}')
    if set(box_only) & set(image_level):
        raise ValueError('cotrain: a class cannot be both box-only and image-level-only')
    seg = [n for n in names if n not in box_only and n not in image_level]
    if not seg:
        raise ValueError('cotrain: no class is left for the segmentation set')
    num_boxes = int(cotrain.get('num_boxes', num_train))
    per_class = int(cotrain.get('num_image_level', 50))
    out = {'segmentation_classes': tuple(names.index(n) for n in seg),
           'box_only_classes': tuple(names.index(n) for n in box_only),
           'image_level_classes': tuple(names.index(n) for n in image_level)}
    out['boxes'] = _write_coco_split(out_dir, 'boxes', 'jpg', num_boxes, names, seed, render_kw,
                                     draw=seg + box_only, masks=False) if box_only else None
    out['image_level'] = _write_image_level(out_dir, per_class, image_level, seed, render_kw,
                                            cotrain.get('image_level_diameter', (140.0, 230.0))) \
        if image_level else None
    return out


def generator_setting(setting: Union[str, Dict]) -> Dict:
    """The render options of a named setting (``GENERATOR_SETTINGS``) or of a
    dict overriding ``'default'``."""
    if isinstance(setting, str):
        if setting not in GENERATOR_SETTINGS:
            raise ValueError(f'unknown generator setting {setting!r}; choose from {sorted(GENERATOR_SETTINGS)} '
                             'or pass a dict of render options')
        return dict(GENERATOR_SETTINGS[setting])
    if not isinstance(setting, dict):
        raise TypeError(f'setting must be a name or a dict, got {type(setting).__name__}')
    unknown = set(setting) - set(GENERATOR_SETTINGS['default'])
    if unknown:
        raise ValueError(f'unknown generator options {sorted(unknown)}; known: {sorted(GENERATOR_SETTINGS["default"])}')
    return {**GENERATOR_SETTINGS['default'], **setting}


def generate_shapes_dataset(out_dir: str,
                            num_train: int = 500,
                            num_val: int = 100,
                            image_size: int = 256,
                            seed: int = 0,
                            classes: Optional[Sequence[Union[str, int]]] = None,
                            min_objects: Optional[int] = None,
                            max_objects: Optional[int] = None,
                            sa1b: bool = True,
                            num_sa1b: Optional[int] = None,
                            min_visible_area: int = 32,
                            max_occlusion: float = 0.5,
                            colour_mode: str = 'class',
                            setting: Union[str, Dict] = 'default',
                            sa1b_extra_shapes: bool = True,
                            cotrain: Optional[Dict] = None) -> Dict:
    """Write the synthetic shapes dataset (COCO train/val + SA-1B layout).

    Args:
        classes: class names or indices into ``SHAPE_CLASSES`` (default: all);
            the first synonym of each name selects its outline. Category ids
            are 1-based positions in this list.
        min_objects, max_objects: objects per image (default: the setting's).
        sa1b: also write ``sa1b/`` (its own images, ``num_sa1b`` of them,
            default ``num_train``) and its class-agnostic COCO file.
        colour_mode: ``'class'`` or ``'random'`` (see :func:`render_scene`).
        setting: appearance (sizes, counts, backgrounds, textures): a name in
            ``GENERATOR_SETTINGS`` or a dict overriding ``'default'``.
        sa1b_extra_shapes: the SA-1B split also draws ``EXTRA_SHAPES``,
            outlines outside the class list.
        cotrain: data for co-training (None: off, outputs unchanged).
            ``dict(box_only=[...], image_level=[...], num_boxes=N,
            num_image_level=M)``: the training split (segmentation data)
            draws only the other classes; ``boxes/`` +
            ``annotations/instances_boxes.json`` hold ``num_boxes`` scenes of
            the segmentation and box-only classes with boxes and labels but
            no masks (detection data); ``image_level/<outline>/`` holds
            ``num_image_level`` single-object images per image-level class,
            with no box or mask, objects of ``image_level_diameter`` pixels
            (default 140-230: object-centric, like ImageNet's photos;
            ``image_level/classes.txt`` names them). The
            validation split keeps every class with masks. Categories are
            always all classes. Adds ``result['cotrain']``.

    Returns:
        ``{'out_dir', 'classes', 'base_classes', 'novel_classes', 'train',
        'val', 'sa1b'}``; ``train``/``val`` hold ``img_dir``, ``ann_file``,
        ``num_images``, ``num_instances``; ``sa1b`` holds ``img_dir``,
        ``list_file``, ``ann_file``, ``num_images``, ``num_masks`` (``None``
        if not written). ``base_classes``/``novel_classes`` are 0-based
        indices into ``classes``.
    """
    names = _resolve_classes(classes)
    style = generator_setting(setting)
    if min_objects is not None:
        style['min_objects'] = min_objects
    if max_objects is not None:
        style['max_objects'] = max_objects
    render_kw = dict(image_size=image_size, min_visible_area=min_visible_area, max_occlusion=max_occlusion,
                     colour_mode=colour_mode, **style)
    out_dir = osp.abspath(out_dir)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    groups = dict(cotrain or {})
    only = set()
    for key in ('box_only', 'image_level'):
        if groups.get(key):
            only |= set(_resolve_classes(groups[key]))
    result = {
        'out_dir': out_dir,
        'classes': tuple(names),
        'train': _write_coco_split(out_dir, 'train', 'jpg', num_train, names, seed, render_kw,
                                   draw=[n for n in names if n not in only] if cotrain else None),
        'val': _write_coco_split(out_dir, 'val', 'png', num_val, names, seed, render_kw),
        'sa1b': None,
    }
    if sa1b:
        n = num_train if num_sa1b is None else num_sa1b
        sa_names = names + [s for s in EXTRA_SHAPES if s not in {_shape_key(x) for x in names}] \
            if sa1b_extra_shapes else names
        result['sa1b'] = _write_sa1b(out_dir, n, sa_names, seed, render_kw)
    if cotrain:
        result['cotrain'] = _write_cotrain_splits(out_dir, names, groups, num_train, seed, render_kw)
    novel_keys = {_shape_key(SHAPE_CLASSES[i]) for i in SHAPE_NOVEL_CLASSES}
    keys = [_shape_key(n) for n in names]
    result['novel_classes'] = tuple(i for i, k in enumerate(keys) if k in novel_keys)
    result['base_classes'] = tuple(i for i, k in enumerate(keys) if k not in novel_keys)
    return result
