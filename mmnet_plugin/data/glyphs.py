"""Glyphs: an embedded, procedurally generated Omniglot-like data set that needs no files.

Every class is an imaginary handwritten character; every image is that character written
once more by a slightly different hand. The data set exists so that the project's main job
(train, evaluate, benchmark) runs on a fresh machine with no downloads, and it is a real
few-shot problem: raw pixels are a weak but non-trivial baseline, while the class identity
(the stroke shapes and their arrangement) stays consistent enough to be learned.

Generative process
------------------
All randomness comes from a counter-based hash (SplitMix64) of ``(tag, seed, global class
id, image number, draw number)`` -- never global random state -- so any image can be made
alone, in any order, on any machine, and is bit-for-bit the same whether it is generated
with its class, with other classes, or by itself.

Class template (keyed by ``(seed, global_class_id)``):

* 2 to 4 strokes (probabilities 0.35 / 0.40 / 0.25). Each stroke is a straight line,
  a corner (two-segment polyline), a quadratic Bezier curve or a cubic Bezier curve
  (probabilities 0.15 / 0.20 / 0.30 / 0.35), through 2 to 4 control points. The first point
  of a stroke is, with probability 0.5, a control point of an earlier stroke (strokes
  touch, as in handwriting), else uniform in ``[0.1, 0.9]^2``; each further control point
  is a step of length U(0.25, 0.6) in a uniformly random direction from the previous one.
* The drawn curve is centred and scaled so that its larger side spans 0.65 of the image.

Image ``j`` of a class (keyed by ``(seed, global_class_id, j)``):

* every control point moves by N(0, 0.04) per coordinate and every stroke as a whole by
  N(0, 0.035) (another hand, another placement of the strokes);
* an affine jitter about the centre: rotation N(0, 7 deg) clipped to +-15 deg, scale
  exp(N(0, 0.08)), aspect exp(N(0, 0.06)), shear N(0, 0.08), translation N(0, 0.05)
  clipped to +-0.08 (unit square);
* pen: a Gaussian pen of sigma U(0.5, 0.8) pixels at 28 px (scaled with ``image_size``).

Rendering integrates the Gaussian pen along each stroke (points sampled along the arc
about every 1.4 pen sigmas, each weighted by its arc-length share). The 2-D Gaussian is
separable, so an image is one small matrix product ``G_y^T diag(w) G_x`` -- anti-aliased,
vectorised over many images at once, no per-pixel Python. Ink is
``min(1, 1.6 * density / (sigma sqrt(2 pi)))``: 1.0 on the stroke, 0.0 on the background,
stored as uint8 (``round(255 * ink)``).

Machine independence
--------------------
The bytes of every image are the same on every CPU, with any thread count and batch size
(a test pins their SHA-256). The first renderer was not: its float32 matrix product went
through OpenBLAS, whose kernel (chosen per CPU) sums in its own order -- forcing another
kernel with ``OPENBLAS_CORETYPE`` changed 16% of the float values of 4,000 images by up to
3e-7 -- and numpy's exp/log/sin/cos have CPU-specific SIMD implementations (AVX2, AVX-512)
that differ by an ulp; after rounding to uint8 a few pixels of the 60,000 train images
flipped, and the bare command's pixel fingerprint differed between an AMD and an Intel
AVX-512 CPU. Now every float operation is an IEEE-754 basic operation (+ - * / sqrt,
correctly rounded everywhere) or an exact one (frexp, ldexp, rint); exp, log and sin/cos
are polynomials written with those; and the pen's matrix product is summed exactly in
int64 from 15-bit fixed-point factors. Images are the same shapes as before, but not the
same bytes: the pixel fingerprints changed once, with this renderer.

Measured (numpy 1.26, torch 2, a 2-core CPU shared with other jobs)
-------------------------------------------------------------------
* Raw-pixel 1-nearest-neighbour (Euclidean on the flattened 28x28 pixels), 5-way 1-shot
  test episodes with 15 queries per class, 500 episodes of ``EpisodeSampler(seed=0)``:
  **56.5%**, the same with the exact renderer of issue 19 (before it: sampler seeds 1 and 2:
  56.8%, 56.6%; data set seeds 1 and 2, 300 episodes: 57.5%, 57.7%; chance is 20%), from
  ``PYTHONPATH=. python -m mmnet_plugin.data.glyphs --split test --episodes 500``.
* The class identity is learnable: a Conv-4 Prototypical Network trained on ``train`` for
  only 44 episodes of 20-way 1-shot (4 minutes of that loaded CPU) already scores 86.9% on
  200 of the same 5-way 1-shot test episodes.
* Generation: 20,000 images (the 1000 test classes x 20) in 4 to 5 s of CPU time, one
  thread, with the exact renderer (1.4 s with the earlier float32 BLAS one); the same
  command reports the figures. Images are cached per
  class as uint8 on first access, so repeated draws cost only a copy.
"""

from __future__ import annotations

import argparse
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .base import FewShotDataset

__all__ = ["Glyphs", "SPLITS", "render_glyph_images", "nearest_neighbour_accuracy"]

#: split name -> (first global class id, default number of classes). The id blocks are a
#: million apart, so ``classes=`` may grow a split far past its default and the splits
#: still never share a class.
SPLITS: Dict[str, Tuple[int, int]] = {
    "train": (0, 3000),
    "val": (1_000_000, 300),
    "test": (2_000_000, 1000),
}
_SPLIT_CAPACITY = 1_000_000
_VALID_SPLITS = ("train", "val", "test", "trainval")

_TAG_TEMPLATE = 0x6D6D6E657401  # class templates
_TAG_IMAGE = 0x6D6D6E657402  # per-image jitter

# ---------------------------------------------------------------- generative constants
_STROKE_COUNTS = (2, 3, 4)
_STROKE_COUNT_P = (0.35, 0.40, 0.25)
_KINDS = ("line", "corner", "quad", "cubic")
_KIND_P = (0.15, 0.20, 0.30, 0.35)
_KIND_POINTS = {"line": 2, "corner": 3, "quad": 3, "cubic": 4}
_KIND_PIECES = {"line": 1, "corner": 2, "quad": 1, "cubic": 1}
_ATTACH_P = 0.5
_STEP = (0.25, 0.6)
_GLYPH_EXTENT = 0.65

_CTRL_NOISE = 0.04
_STROKE_SHIFT = 0.035
_ROT_SD_DEG, _ROT_MAX_DEG = 7.0, 15.0
_SCALE_SD, _ASPECT_SD, _SHEAR_SD = 0.08, 0.06, 0.08
_SHIFT_SD, _SHIFT_MAX = 0.05, 0.08
_PEN_SIGMA_28 = (0.5, 0.8)
_INK_GAIN = 1.6
_SAMPLE_SPACING = 1.4  # arc-length sample spacing, in pen sigmas

_MAX_STROKES = max(_STROKE_COUNTS)
_MAX_POINTS = 4 * _MAX_STROKES
_MAX_PIECES = 2 * _MAX_STROKES

# template uniforms: 1 for the stroke count, then 12 per stroke
_T_PER_STROKE = 12
_T_COUNT = 1 + _T_PER_STROKE * _MAX_STROKES
# image uniforms: 16 global, 4 per stroke (shift), 4 per control point (noise)
_U_GLOBAL = 16
_U_STROKES = _U_GLOBAL
_U_POINTS = _U_STROKES + 4 * _MAX_STROKES
_U_COUNT = _U_POINTS + 4 * _MAX_POINTS

_RENDER_CHUNK = 2560  # images rendered per vectorised call
_SPLAT_GROUP = 64  # images per pen-integration matrix product
_PAD_TO = 16  # sample counts are padded to a multiple of this

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


# ====================================================================== random numbers
def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z *= _C1
    z ^= z >> np.uint64(27)
    z *= _C2
    z ^= z >> np.uint64(31)
    return z


def _uniforms(tag: int, seed: int, classes: np.ndarray, images: np.ndarray, count: int) -> np.ndarray:
    """Uniforms in ``(0, 1)``, ``[len(classes), count]``.

    Row ``i`` depends only on ``(tag, seed, classes[i], images[i])`` and column ``k`` only on
    the draw number ``k`` -- a counter-based stream per row, so asking for more columns or
    other rows never changes a value.
    """
    key = _mix64(np.asarray([tag], dtype=np.uint64))
    key = _mix64(key ^ np.asarray([seed], dtype=np.uint64))
    keys = _mix64(key ^ np.asarray(classes, dtype=np.uint64).reshape(-1))
    keys = _mix64(keys ^ np.asarray(images, dtype=np.uint64).reshape(-1))
    counters = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
    bits = _mix64(keys[:, None] + counters[None, :])
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


# ====================================================================== portable math
# Every float operation of the renderer is an IEEE-754 basic operation (+ - * / sqrt, which
# are correctly rounded on every CPU and in every SIMD kernel), a comparison, or an exact
# operation (frexp, ldexp, rint, floor). numpy's exp/log/sin/cos are *not* used: their
# results depend on the CPU's SIMD dispatch (AVX2, AVX-512, ...) and on the numpy/libm
# version, and one ulp there moves a pixel across a rounding edge. Nor is any float matrix
# product (BLAS kernels sum in kernel-dependent order): the pen is integrated in int64.
_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split of ln 2: k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_TWO_PI = 6.28318530717958647692
_SQRT_HALF = 0.70710678118654752440


def _exp(x: np.ndarray) -> np.ndarray:
    """``e**x`` from basic operations only (relative error ~1e-16; 0 below -700)."""
    x = np.asarray(x, dtype=np.float64)
    xc = np.clip(x, -700.0, 700.0)
    k = np.rint(xc * _INV_LN2)
    r = (xc - k * _LN2_HI) - k * _LN2_LO  # |r| <= 0.35
    p = np.full_like(r, 1.0 / 6227020800.0)  # Taylor to r**13 / 13!
    for n in range(12, 0, -1):
        p = p * r + 1.0 / math.factorial(n)
    p = p * r + 1.0
    out = np.ldexp(p, k.astype(np.int64))
    return np.where(x < -700.0, 0.0, out)


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive ``x`` from basic operations only (frexp is exact)."""
    m, e = np.frexp(np.asarray(x, dtype=np.float64))  # m in [0.5, 1)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)  # m in [0.707, 1.414)
    e = (e - low).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)  # |s| <= 0.172; log m = 2 atanh s
    s2 = s * s
    p = np.full_like(s, 1.0 / 23.0)
    for n in range(21, 0, -2):
        p = p * s2 + 1.0 / n
    return e * _LN2_HI + (e * _LN2_LO + 2.0 * s * p)


def _sincos_turns(t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(sin, cos)`` of ``2 pi t`` (``t`` in turns), from basic operations only."""
    t = np.asarray(t, dtype=np.float64)
    q = np.rint(t * 4.0)  # quarter turns; t * 4 and t - q / 4 are exact for |t| < 2**50
    r = (t - q * 0.25) * _TWO_PI  # |r| <= pi / 4
    r2 = r * r
    sp = np.full_like(r, -1.0 / 1307674368000.0)  # sin: r - r**3/3! + ... - r**15/15!
    cp = np.full_like(r, 1.0 / 20922789888000.0)  # cos: 1 - r**2/2! + ... + r**16/16!
    for n in range(13, 0, -2):
        sp = sp * r2 + (-1.0) ** ((n - 1) // 2) / math.factorial(n)
    for n in range(14, -1, -2):
        cp = cp * r2 + (-1.0) ** (n // 2) / math.factorial(n)
    sin_r = sp * r
    quadrant = np.mod(q, 4.0)
    sin = np.where(quadrant == 0, sin_r, np.where(quadrant == 1, cp, np.where(quadrant == 2, -sin_r, -cp)))
    cos = np.where(quadrant == 0, cp, np.where(quadrant == 1, -sin_r, np.where(quadrant == 2, -cp, sin_r)))
    return sin, cos


def _normals(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Box-Muller: standard normals from two arrays of uniforms in ``(0, 1)``."""
    return np.sqrt(-2.0 * _log(u1)) * _sincos_turns(u2)[1]


def _hypot2(d: np.ndarray) -> np.ndarray:
    """Euclidean length over a last axis of 2, as one fixed sequence of basic operations."""
    return np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1])


def _lincomb(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``weights @ values`` summed term by term in index order (no BLAS, no einsum)."""
    out = weights[..., 0, None] * values[..., None, 0, :]
    for k in range(1, weights.shape[-1]):
        out = out + weights[..., k, None] * values[..., None, k, :]
    return out


# ====================================================================== class templates
class _Template:
    """A class's strokes as padded control points and the linear map to cubic pieces.

    Attributes:
        points: ``[_MAX_POINTS, 2]`` control points in the unit square (x right, y down);
            unused rows are zero.
        stroke_of_point: ``[_MAX_POINTS]`` stroke index of each control point.
        to_cubic: ``[_MAX_PIECES * 4, _MAX_POINTS]``; ``to_cubic @ points`` gives the cubic
            Bezier control points of every piece (lines, corners and quadratics are
            rewritten exactly as cubics); unused pieces are zero.
        piece_valid: ``[_MAX_PIECES]`` which pieces are drawn.
        n_strokes: number of strokes.
    """

    __slots__ = ("points", "stroke_of_point", "to_cubic", "piece_valid", "n_strokes")

    def __init__(
        self,
        points: np.ndarray,
        stroke_of_point: np.ndarray,
        to_cubic: np.ndarray,
        piece_valid: np.ndarray,
        n_strokes: int,
    ) -> None:
        self.points = points
        self.stroke_of_point = stroke_of_point
        self.to_cubic = to_cubic
        self.piece_valid = piece_valid
        self.n_strokes = n_strokes


_LOCAL_CUBIC = {
    "line": np.array([[1, 0], [2 / 3, 1 / 3], [1 / 3, 2 / 3], [0, 1]], dtype=np.float64),
    "corner": np.array(
        [
            [1, 0, 0],
            [2 / 3, 1 / 3, 0],
            [1 / 3, 2 / 3, 0],
            [0, 1, 0],
            [0, 1, 0],
            [0, 2 / 3, 1 / 3],
            [0, 1 / 3, 2 / 3],
            [0, 0, 1],
        ],
        dtype=np.float64,
    ),
    "quad": np.array([[1, 0, 0], [1 / 3, 2 / 3, 0], [0, 2 / 3, 1 / 3], [0, 0, 1]], dtype=np.float64),
    "cubic": np.eye(4, dtype=np.float64),
}


def _pick(r: float, probabilities: Sequence[float]) -> int:
    """Index drawn from a categorical distribution with uniform ``r``."""
    edge = 0.0
    for i, p in enumerate(probabilities):
        edge += p
        if r < edge:
            return i
    return len(probabilities) - 1


def _make_template(u: Sequence[float]) -> _Template:
    """Build one class template from its ``_T_COUNT`` uniforms (see the module docstring)."""
    n_strokes = _STROKE_COUNTS[_pick(u[0], _STROKE_COUNT_P)]
    points = np.zeros((_MAX_POINTS, 2), dtype=np.float64)
    stroke_of_point = np.zeros(_MAX_POINTS, dtype=np.int64)
    to_cubic = np.zeros((_MAX_PIECES * 4, _MAX_POINTS), dtype=np.float64)
    piece_valid = np.zeros(_MAX_PIECES, dtype=bool)
    n_pts = n_pieces = 0
    for s in range(n_strokes):
        v = u[1 + _T_PER_STROKE * s : 1 + _T_PER_STROKE * (s + 1)]
        kind = _KINDS[_pick(v[0], _KIND_P)]
        k = _KIND_POINTS[kind]
        if s > 0 and v[1] < _ATTACH_P:
            x, y = points[min(int(v[2] * n_pts), n_pts - 1)]
        else:
            x, y = 0.1 + 0.8 * v[3], 0.1 + 0.8 * v[4]
        points[n_pts] = (x, y)
        for i in range(1, k):
            step = _STEP[0] + (_STEP[1] - _STEP[0]) * v[3 + 2 * i]
            sin, cos = _sincos_turns(v[4 + 2 * i])
            x = min(1.0, max(0.0, x + step * float(cos)))
            y = min(1.0, max(0.0, y + step * float(sin)))
            points[n_pts + i] = (x, y)
        stroke_of_point[n_pts : n_pts + k] = s
        local = _LOCAL_CUBIC[kind]
        pieces = _KIND_PIECES[kind]
        to_cubic[4 * n_pieces : 4 * (n_pieces + pieces), n_pts : n_pts + k] = local
        piece_valid[n_pieces : n_pieces + pieces] = True
        n_pts += k
        n_pieces += pieces
    # centre the drawn curve (not the control polygon); scale its larger side to the extent
    cubic = _lincomb(to_cubic, points).reshape(-1, 4, 2)[piece_valid]  # [pieces, 4, 2]
    curve = _lincomb(_BERNSTEIN_24[None], cubic)  # [pieces, 24, 2]
    lo, hi = curve.reshape(-1, 2).min(axis=0), curve.reshape(-1, 2).max(axis=0)
    size = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-3))
    points[:n_pts] = (points[:n_pts] - (lo + hi) / 2.0) * (_GLYPH_EXTENT / size) + 0.5
    return _Template(points, stroke_of_point, to_cubic, piece_valid, n_strokes)


def _templates(seed: int, global_classes: Sequence[int]) -> List[_Template]:
    """The templates of ``global_classes``, each from its own keyed stream."""
    ids = np.asarray(global_classes, dtype=np.int64).reshape(-1)
    u = _uniforms(_TAG_TEMPLATE, seed, ids, np.zeros_like(ids), _T_COUNT)
    return [_make_template(row) for row in u.tolist()]


def _bernstein(t: np.ndarray) -> np.ndarray:
    """Cubic Bernstein basis at parameters ``t``, ``[len(t), 4]``."""
    m = 1.0 - t
    out = np.empty((len(t), 4))
    out[:, 0] = m * m * m
    out[:, 1] = 3.0 * m * m * t
    out[:, 2] = 3.0 * m * t * t
    out[:, 3] = t * t * t
    return out


# i * (1/23), last 1.0: numpy's linspace(0, 1, 24) today, written out so that the values
# cannot move with another numpy version's linspace formula
_T_24 = np.arange(24, dtype=np.float64) * (1.0 / 23.0)
_T_24[-1] = 1.0
_BERNSTEIN_24 = _bernstein(_T_24)


# ====================================================================== rendering
def _render(
    seed: int,
    templates: Sequence[_Template],
    global_classes: np.ndarray,
    slot: np.ndarray,
    images: np.ndarray,
    size: int,
) -> np.ndarray:
    """Render rows ``(templates[slot[i]], images[i])``; uint8 ``[B, size, size]``."""
    b = len(slot)
    pts0 = np.stack([t.points for t in templates])[slot]  # [B, P, 2]
    stroke_of = np.stack([t.stroke_of_point for t in templates])[slot]  # [B, P]
    to_cubic = np.stack([t.to_cubic for t in templates])[slot]  # [B, 4Q, P]
    valid = np.stack([t.piece_valid for t in templates])[slot].reshape(-1)  # [B*Q]
    u = _uniforms(_TAG_IMAGE, seed, np.asarray(global_classes)[slot], images, _U_COUNT)

    # --- control-point and per-stroke jitter (unit square)
    pu = u[:, _U_POINTS:].reshape(b, _MAX_POINTS, 4)
    su = u[:, _U_STROKES:_U_POINTS].reshape(b, _MAX_STROKES, 4)
    stroke_shift = _normals(su[..., 0::2], su[..., 1::2]) * _STROKE_SHIFT  # [B, strokes, 2]
    pts = (
        pts0
        + _normals(pu[..., 0::2], pu[..., 1::2]) * _CTRL_NOISE
        + np.take_along_axis(stroke_shift, stroke_of[..., None], axis=1)
    )
    ctrl = _lincomb(to_cubic, pts)  # [B, 4Q, 2]

    # --- affine jitter about the centre
    g = _normals(u[:, 0:6], u[:, 6:12])
    rot_turns = np.clip(g[:, 0] * _ROT_SD_DEG, -_ROT_MAX_DEG, _ROT_MAX_DEG) / 360.0
    scale = _exp(g[:, 1] * _SCALE_SD)
    aspect = _exp(g[:, 2] * _ASPECT_SD)
    shear = g[:, 3] * _SHEAR_SD
    shift = np.clip(g[:, 4:6] * _SHIFT_SD, -_SHIFT_MAX, _SHIFT_MAX)
    sin, cos = _sincos_turns(rot_turns)
    sx, sy = scale * aspect, scale / aspect
    a = np.empty((b, 2, 2))  # rotation @ [[sx, shear * sx], [0, sy]]
    a[:, 0, 0] = cos * sx
    a[:, 0, 1] = cos * shear * sx - sin * sy
    a[:, 1, 0] = sin * sx
    a[:, 1, 1] = sin * shear * sx + cos * sy
    cx, cy = ctrl[..., 0] - 0.5, ctrl[..., 1] - 0.5
    ctrl = np.stack(
        [a[:, 0, 0, None] * cx + a[:, 0, 1, None] * cy, a[:, 1, 0, None] * cx + a[:, 1, 1, None] * cy], axis=-1
    ) + (0.5 + shift[:, None, :])
    ctrl = ctrl * size - 0.5  # pixel-index coordinates: the centre of pixel i is at i
    sigma = (_PEN_SIGMA_28[0] + (_PEN_SIGMA_28[1] - _PEN_SIGMA_28[0]) * u[:, 12]) * (size / 28.0)

    # --- arc-length sampling of every piece (ragged, vectorised)
    cubic = ctrl.reshape(b * _MAX_PIECES, 4, 2)
    d = np.diff(cubic, axis=1)
    seg_len = _hypot2(d)
    poly_len = seg_len[:, 0] + seg_len[:, 1] + seg_len[:, 2]  # control polygon >= arc length
    spacing = np.repeat(_SAMPLE_SPACING * sigma, _MAX_PIECES)
    counts = np.where(valid, np.maximum(2, np.ceil(poly_len / spacing).astype(np.int64) + 1), 0)
    piece_of = np.repeat(np.arange(b * _MAX_PIECES), counts)
    starts = np.cumsum(counts) - counts
    local = np.arange(len(piece_of)) - starts[piece_of]
    basis = _bernstein(local / (counts[piece_of] - 1))
    samples = _lincomb(basis[:, None, :], cubic[piece_of])[:, 0]  # [T, 2]
    d = np.diff(samples, axis=0)
    seg = _hypot2(d) * (piece_of[1:] == piece_of[:-1])
    weight = np.zeros(len(samples))
    weight[:-1] += 0.5 * seg
    weight[1:] += 0.5 * seg

    # --- the pen, for groups of images with the same padded sample count. The padding
    # depends only on the image itself, so each image's arithmetic (and so its pixels) is
    # the same whatever other images share its batch.
    image_of = piece_of // _MAX_PIECES
    per_image = np.bincount(image_of, minlength=b)
    first_sample = np.cumsum(per_image) - per_image
    padded = -(-per_image // _PAD_TO) * _PAD_TO
    order = np.argsort(padded, kind="stable")
    run_starts = np.flatnonzero(np.diff(padded[order], prepend=-1))
    run_ends = np.append(run_starts[1:], b)
    out = np.empty((b, size, size), dtype=np.uint8)
    for run_lo, run_hi in zip(run_starts.tolist(), run_ends.tolist()):
        for lo in range(run_lo, run_hi, _SPLAT_GROUP):
            group = order[lo : min(lo + _SPLAT_GROUP, run_hi)]
            out[group] = _splat_group(
                samples, weight, first_sample[group], per_image[group], int(padded[group[0]]), sigma[group], size
            )
    return out


def _splat_group(
    samples: np.ndarray,
    weight: np.ndarray,
    first: np.ndarray,
    cnt: np.ndarray,
    n_max: int,
    sigma: np.ndarray,
    size: int,
) -> np.ndarray:
    """Gather a group's samples into padded ``[2, G, n_max]`` arrays and draw them."""
    row = np.repeat(np.arange(len(cnt)), cnt)
    col = np.arange(len(row)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    src = first[row] + col
    xy = np.full((2, len(cnt), n_max), -1e4, dtype=np.float64)
    ws = np.zeros((len(cnt), n_max), dtype=np.float64)
    xy[:, row, col] = samples[src].T
    ws[row, col] = weight[src]
    return _splat(xy, ws, sigma, size)


_FIX_BITS = 15  # fixed-point fraction bits of each pen factor; their products carry 30


def _splat(xy: np.ndarray, ws: np.ndarray, sigma: np.ndarray, size: int) -> np.ndarray:
    """Ink of a Gaussian pen of ``sigma`` pixels drawn through weighted points, as uint8.

    The separable pen factors ``G_x`` and ``diag(w) G_y * gain / (sigma sqrt(2 pi))`` are
    computed in float64 from basic operations, rounded to 15-bit fixed point, and their
    product ``G_y^T G_x`` is summed in int64: exact, so its value cannot depend on the
    summation order, the BLAS kernel or the number of threads. Ink is
    ``min(255, round(255 * density))``.

    Args:
        xy: ``[2, B, N]`` point coordinates in pixel-index units (x, then y).
        ws: ``[B, N]`` arc-length weights (0 for padding).
        sigma: ``[B]`` pen sigma in pixels.
        size: image side.

    Returns:
        uint8 ``[B, size, size]``, 255 on the stroke, 0 on the background.
    """
    grid = np.arange(size, dtype=np.float64)
    g = grid - xy[..., None]  # [2, B, N, S]
    g = g * g
    g = g * (-0.5 / (sigma * sigma))[None, :, None, None]
    g = _exp(g)
    gain = _INK_GAIN / (sigma * math.sqrt(2.0 * math.pi))  # sqrt of a constant: one basic op
    gy = g[1] * (ws * gain[:, None])[:, :, None]
    one = float(1 << _FIX_BITS)
    qx = np.rint(g[0] * one).astype(np.int64)  # [B, N, cols]
    qy = np.rint(gy * one).astype(np.int64)  # [B, N, rows]
    acc = np.matmul(qy.transpose(0, 2, 1), qx)  # int64 [B, rows, cols]: exact, no BLAS
    half = 1 << (2 * _FIX_BITS - 1)
    return np.minimum((acc * 255 + half) >> (2 * _FIX_BITS), 255).astype(np.uint8)


def render_glyph_images(
    seed: int,
    global_classes: Union[int, Sequence[int], np.ndarray],
    images: Union[int, Sequence[int], np.ndarray],
    image_size: int = 28,
) -> np.ndarray:
    """Render glyph images without a data set object.

    Args:
        seed: the data set seed (non-negative).
        global_classes: the global class id of every image (or one id for all); a split's
            class ``c`` has global id ``SPLITS[split][0] + c``.
        images: the image number ``j`` within its class of every image (or one number).
        image_size: side of the square images in pixels.

    Returns:
        float32 ``[n, image_size, image_size]``, ink 1.0 on background 0.0, in steps of
        1/255 (the stored uint8 form divided by 255). Image ``i`` depends only on
        ``(seed, global_classes[i], images[i], image_size)``, and its bytes are the same on
        every CPU, with any number of threads (see ``_splat``).

    Raises:
        ValueError: if ``global_classes`` and ``images`` have different lengths, or an id
            or number is negative.
    """
    gids = np.asarray(global_classes, dtype=np.int64).reshape(-1)
    js = np.asarray(images, dtype=np.int64).reshape(-1)
    if len(gids) != len(js) and 1 not in (len(gids), len(js)):
        raise ValueError(
            f"global_classes has {len(gids)} entries but images has {len(js)}; give one class id "
            "per image (or a single id for all)"
        )
    gids, js = np.broadcast_arrays(gids, js)
    if (gids < 0).any() or (js < 0).any():
        raise ValueError("global class ids and image numbers must be non-negative")
    return _render_uint8(seed, gids, js, int(image_size)).astype(np.float32) / np.float32(255.0)


def _render_uint8(seed: int, gids: np.ndarray, js: np.ndarray, size: int) -> np.ndarray:
    """The images of ``(gids[i], js[i])`` as uint8 ``[n, size, size]`` (the stored form)."""
    out = np.empty((len(gids), size, size), dtype=np.uint8)
    uniq, slot = np.unique(gids, return_inverse=True)
    templates = _templates(seed, uniq)
    for lo in range(0, len(gids), _RENDER_CHUNK):
        sl = slice(lo, lo + _RENDER_CHUNK)
        out[sl] = _render(seed, templates, uniq, slot.reshape(-1)[sl], js[sl], size)
    return out


# ====================================================================== the data set
class Glyphs(FewShotDataset):
    """Procedurally generated handwritten-like glyphs (see the module docstring).

    Items are numbered class-major: item ``c * images_per_class + j`` is image ``j`` of the
    split's class ``c``, and its target is ``c``. Images are generated lazily, a class at a
    time, on first access, and cached in memory as uint8.

    Args:
        split: ``train`` (3000 classes), ``val`` (300), ``test`` (1000) or ``trainval``
            (train followed by val). The splits never share a class.
        seed: the data set seed (non-negative integer); the same seed gives the same
            images on every machine, whatever order they are accessed in.
        image_size: side of the square images in pixels (8 to 1024).
        classes: number of classes in the split instead of the default (at most
            1,000,000). For ``trainval`` it is the total, shared in the default 10:1
            train:val ratio.
        images_per_class: images per class (Omniglot has 20 drawers per character).

    Raises:
        ValueError: for an unknown split or a bad count, size or seed.
    """

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        image_size: int = 28,
        classes: Optional[int] = None,
        images_per_class: int = 20,
    ) -> None:
        key = str(split).lower().strip()
        if key not in _VALID_SPLITS:
            raise ValueError(f"unknown glyphs split {split!r}; choose one of {', '.join(_VALID_SPLITS)}")
        self.seed = _check_int(seed, "seed", 0, 2**63 - 1)
        self.image_size = _check_int(image_size, "image_size", 8, 1024)
        self.images_per_class = _check_int(images_per_class, "images_per_class", 1, 1_000_000)
        if classes is not None:
            classes = _check_int(classes, "classes", 1, _SPLIT_CAPACITY)
        self.split = key

        if key == "trainval":
            n_train, n_val = SPLITS["train"][1], SPLITS["val"][1]
            if classes is not None:
                if classes < 2:
                    raise ValueError(
                        f"classes={classes} is too few for trainval, which needs at least one train "
                        "and one val class; ask for 2 or more"
                    )
                n_val = max(1, round(classes * n_val / (n_train + n_val)))
                n_train = classes - n_val
            parts = [("train", n_train), ("val", n_val)]
        else:
            parts = [(key, SPLITS[key][1] if classes is None else classes)]

        ids: List[int] = []
        names: List[str] = []
        for part, n in parts:
            first = SPLITS[part][0]
            ids.extend(range(first, first + n))
            names.extend(f"glyph-{part}-{i:04d}" for i in range(n))
        #: global class id of each class index (the id that keys its template and images)
        self.class_ids = np.asarray(ids, dtype=np.int64)
        self.class_names = names
        self.targets = np.repeat(np.arange(len(ids), dtype=np.int64), self.images_per_class)
        self._cache: Dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ access
    def load(self, indices: np.ndarray) -> torch.Tensor:
        """Images of ``indices`` as float32 ``[n, 1, S, S]`` in ``[0, 1]`` (ink 1.0).

        Raises:
            IndexError: if an index is outside ``0..len(self)-1``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
            raise IndexError(f"glyph index {bad} out of range: this split has {n} images (0..{n - 1})")
        cls, j = np.divmod(idx, self.images_per_class)
        wanted = np.unique(cls).tolist()
        self._generate(wanted)
        out = np.empty((idx.size, self.image_size, self.image_size), dtype=np.uint8)
        for c in wanted:
            sel = cls == c
            out[sel] = self._cache[c][j[sel]]
        # converted in numpy: small torch ops pay for waking the intra-op thread pool
        return torch.from_numpy((out.astype(np.float32) / np.float32(255.0))[:, None])

    def class_images(self, index: int) -> np.ndarray:
        """All images of class ``index`` as uint8 ``[images_per_class, S, S]`` (cached).

        Raises:
            IndexError: if the class index is outside the split.
        """
        index = int(index)
        if not 0 <= index < self.num_classes:
            raise IndexError(f"class index {index} out of range: this split has {self.num_classes} classes")
        self._generate([index])
        return self._cache[index]

    def materialize(self, classes: Optional[Iterable[int]] = None) -> "Glyphs":
        """Generate (and cache) every image of ``classes`` (default: all) now.

        Returns:
            ``self``, for chaining.

        Raises:
            IndexError: if a class index is outside the split.
        """
        wanted = list(range(self.num_classes)) if classes is None else [int(c) for c in classes]
        bad = [c for c in wanted if not 0 <= c < self.num_classes]
        if bad:
            raise IndexError(f"class index {bad[0]} out of range: this split has {self.num_classes} classes")
        self._generate(wanted)
        return self

    def clear_cache(self) -> None:
        """Forget the generated images (they are regenerated identically when needed)."""
        self._cache.clear()

    @property
    def cached_classes(self) -> int:
        """How many classes have been generated so far."""
        return len(self._cache)

    def _generate(self, classes: Sequence[int]) -> None:
        missing = [c for c in classes if c not in self._cache]
        if not missing:
            return
        per_call = max(1, _RENDER_CHUNK // self.images_per_class)
        ipc = self.images_per_class
        for lo in range(0, len(missing), per_call):
            block = missing[lo : lo + per_call]
            gids = np.repeat(self.class_ids[block], ipc)
            js = np.tile(np.arange(ipc, dtype=np.int64), len(block))
            pixels = _render_uint8(self.seed, gids, js, self.image_size)
            pixels = pixels.reshape(len(block), ipc, self.image_size, self.image_size)
            for c, imgs in zip(block, pixels):
                self._cache[c] = imgs

    @staticmethod
    def describe() -> str:
        """The generative process and the measured raw-pixel 1-NN figure, as text."""
        return __doc__ or ""

    def __repr__(self) -> str:
        return (
            f"Glyphs(split={self.split!r}, seed={self.seed}, image_size={self.image_size}, "
            f"classes={self.num_classes}, images_per_class={self.images_per_class})"
        )


def _check_int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    v = int(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be between {lo:,} and {hi:,}; got {v:,}")
    return v


# ====================================================================== the 1-NN baseline
def nearest_neighbour_accuracy(
    dataset: FewShotDataset, episodes: int = 500, ways: int = 5, shots: int = 1, queries: int = 15, seed: int = 0
) -> float:
    """Raw-pixel 1-nearest-neighbour accuracy (Euclidean on flattened pixels) on episodes.

    Args:
        dataset: the data set to draw from.
        episodes: how many episodes.
        ways: classes per episode.
        shots: support images per class.
        queries: query images per class.
        seed: the :class:`~mmnet_plugin.episodes.EpisodeSampler` seed.

    Returns:
        The accuracy over all queries of all episodes, in ``[0, 1]``.
    """
    from ..episodes import EpisodeSampler

    sampler = EpisodeSampler(dataset, ways=ways, shots=shots, queries=queries, seed=seed)
    correct = total = 0
    for _ in range(int(episodes)):
        ep = sampler.sample()
        q = ep.query_x.flatten(1).numpy().astype(np.float64)
        s = ep.support_x.flatten(1).numpy().astype(np.float64)
        d2 = (q * q).sum(1)[:, None] - 2.0 * q @ s.T + (s * s).sum(1)[None, :]
        nearest = d2.argmin(axis=1)
        correct += int((ep.support_y.numpy()[nearest] == ep.query_y.numpy()).sum())
        total += len(nearest)
    return correct / max(total, 1)


def _main(argv: Optional[Sequence[str]] = None) -> int:  # pragma: no cover - command line
    import time

    parser = argparse.ArgumentParser(
        prog="python -m mmnet_plugin.data.glyphs",
        description="Time glyph generation and measure the raw-pixel 1-NN baseline.",
    )
    parser.add_argument("--split", default="test", choices=_VALID_SPLITS)
    parser.add_argument("--seed", type=int, default=0, help="data set seed")
    parser.add_argument("--sampler-seed", type=int, default=0, help="episode sampler seed")
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=28)
    args = parser.parse_args(argv)

    ds = Glyphs(split=args.split, seed=args.seed, image_size=args.image_size, classes=args.classes)
    t0, c0 = time.perf_counter(), time.process_time()
    ds.materialize()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    acc = nearest_neighbour_accuracy(
        ds, episodes=args.episodes, ways=args.ways, shots=args.shots, queries=args.queries, seed=args.sampler_seed
    )
    print(
        f"{ds!r}: generated {len(ds)} images in {dt:.2f} s wall, {cpu:.2f} s CPU "
        f"({len(ds) / dt:,.0f} images/s wall, {len(ds) / max(cpu, 1e-9):,.0f} images/s CPU)"
    )
    print(
        f"raw-pixel 1-NN, {args.ways}-way {args.shots}-shot, {args.queries} queries, "
        f"{args.episodes} episodes (sampler seed {args.sampler_seed}): {acc:.1%}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
