"""Video quality metrics: pure functions on uint8 RGB frames, no I/O.

    from vidgpt.metrics import psnr, frechet_distance, pixstat_features, classify, object_stats
    p = psnr(generated, truth)                      # (..., T) dB, capped at PSNR_CAP for equal frames
    fd = frechet_distance(pixstat_features(gen_chunks), pixstat_features(true_chunks))
    stats = object_stats(classify(frames, scene.background))

Frames are uint8 (T, H, W, 3) RGB, or batched (N, T, H, W, 3); pixel metrics work on [0, 1] floats.

Three families:
- pixel metrics: `mse`, `psnr` per frame;
- Fréchet distances between feature sets: `frechet_distance`, with two feature extractors for chunks
  of frames: `pixstat_features` (built in, cheap, NOT FVD: pooled colour and motion statistics) and
  `i3d_features` (a local TorchScript I3D; with it the distance is the usual FVD);
- object metrics on the built-in synthetic scenes (`data_pipeline.synthetic`): every pixel is
  classified to the scene background or a PALETTE colour, or as an edge (a blend of the background
  and one of them), or as "garbage" (near none of these), then per frame and colour: presence,
  centroid, largest part; per frame: garbage fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data_pipeline.synthetic import PALETTE

PSNR_CAP = 100.0
"""PSNR (dB, peak 1) reported for identical frames, where the true value is infinite."""

COLOURS: tuple[str, ...] = tuple(PALETTE)
"""Palette colour names in label order: label k + 1 is COLOURS[k]."""

BACKGROUND, GARBAGE, EDGE = 0, -1, -2
"""Pixel labels besides the palette colours (1..len(COLOURS)): EDGE is a blend of the background and a
palette colour that is near neither (an anti-aliased or chroma-subsampled shape edge): not garbage, and
not counted as any colour."""

DEFAULT_TOLERANCE = 80.0
"""RGB L2 distance within which a pixel counts as a reference colour. Just under half the smallest
distance between two references (green vs the brightest possible background, 162), so the
tolerance balls never overlap. Measured on mp4 (libx264 crf 18, yuv420p) round-tripped synthetic
32x32 scenes: 1.9% of truth pixels fall outside every ball (shape edges, where chroma subsampling
blends a shape's colour with its neighbour's); `DEFAULT_BLEND_TOLERANCE` accepts most of them."""

DEFAULT_BLEND_TOLERANCE = 60.0
"""RGB L2 distance within which a pixel outside every reference ball counts as EDGE, a blend of the
background and one palette colour (it lies near the segment between the two), rather than garbage.
Anti-aliased edges (a pixel partly covered by a shape) and yuv420p chroma subsampling make such blends.
Measured on mp4 round-tripped held-out scenes (docs/experiments.md 2026-12-06): garbage of the truth
1.75% -> 0.27% with hard edges, 2.86% -> 0.13% with 4x supersampled edges at speed 2.5; uniformly random
pixels 56% -> 24%. Blends between two palette colours (one shape's edge over another) are not accepted:
they are rare in the truth and would accept most of the RGB cube."""


# ----------------------------------------------------------------------------- pixel metrics


def _unit(frames: np.ndarray) -> np.ndarray:
    """uint8 frames -> float64 in [0, 1]."""
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return frames.astype(np.float64) / 255.0


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"need two frame arrays of one shape (..., H, W, 3), got {a.shape} and {b.shape}")


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error per frame on [0, 1] pixels: uint8 (..., H, W, 3) x2 -> (...,)."""
    _check_pair(a, b)
    return ((_unit(a) - _unit(b)) ** 2).mean(axis=(-3, -2, -1))


def psnr(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP) -> np.ndarray:
    """PSNR per frame in dB with peak 1 on [0, 1] pixels: (..., H, W, 3) x2 -> (...,); identical
    frames (and any PSNR above `cap`) give `cap`."""
    err = mse(a, b)
    with np.errstate(divide="ignore"):
        value = -10.0 * np.log10(err)
    return np.minimum(value, cap)


# ----------------------------------------------------------------------------- Fréchet distance


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; round-off negative eigenvalues -> 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _mean_cov(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 1:
        raise ValueError(f"features must be (N>=1, D), got {feats.shape}")
    mu = feats.mean(axis=0)
    if feats.shape[0] == 1:  # one sample: no spread to estimate
        return mu, np.zeros((feats.shape[1], feats.shape[1]))
    return mu, np.cov(feats, rowvar=False, ddof=1).reshape(feats.shape[1], feats.shape[1])


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) and (M, D) features:
    ||mu_a - mu_b||^2 + tr(Sa + Sb - 2 (Sa Sb)^(1/2)).

    tr (Sa Sb)^(1/2) is computed as tr (Sa^(1/2) Sb Sa^(1/2))^(1/2), a symmetric PSD matrix, with
    eigendecompositions only (no general matrix square root, so no complex round-off); eigenvalues
    below 0 (round-off) are clipped to 0, and so is the result. A single sample has covariance 0.
    """
    mu_a, s_a = _mean_cov(feats_a)
    mu_b, s_b = _mean_cov(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature widths differ: {mu_a.shape[0]} and {mu_b.shape[0]}")
    root_a = _sqrtm_psd(s_a)
    inner = root_a @ s_b @ root_a  # (D, D), symmetric PSD
    eig = np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.sqrt(eig).sum())
    return max(value, 0.0)


# ----------------------------------------------------------------------------- chunk features


PIXSTAT_NAME = "frechet_pixstat"
"""Name of the Fréchet distance on `pixstat_features` in reports (it is not FVD)."""
I3D_NAME = "fvd_i3d"
"""Name of the Fréchet distance on `i3d_features` in reports (FVD)."""


def pixstat_features(chunks: np.ndarray, grid: int = 4) -> np.ndarray:
    """Cheap built-in video features of chunks of frames, NOT FVD: uint8 (N, T, H, W, 3) -> (N, 7 g^2).

    Each frame is average-pooled to a g x g grid of RGB means in [0, 1]; per chunk the features are
    - the mean over time of every cell's colour (3 g^2): what is where;
    - the standard deviation over time of every cell's colour (3 g^2): how much it changes;
    - the mean over time of every cell's absolute frame-to-frame difference, averaged over the
      cell's pixels and channels at full resolution (g^2): motion energy, which pooling the colours
      first would hide. Zero for one-frame chunks.
    They see layout, colour and motion at a coarse scale, and nothing of texture or semantics.
    """
    if chunks.dtype != np.uint8 or chunks.ndim != 5 or chunks.shape[-1] != 3:
        raise ValueError(f"chunks must be uint8 (N, T, H, W, 3), got {chunks.dtype} {chunks.shape}")
    n, t, h, w, _ = chunks.shape
    x = torch.from_numpy(np.ascontiguousarray(chunks)).to(torch.float64).div_(255.0)
    x = x.permute(0, 1, 4, 2, 3)  # (N, T, 3, H, W)
    pooled = F.adaptive_avg_pool2d(x.reshape(n * t, 3, h, w), grid).reshape(n, t, 3 * grid * grid)
    colour_mean = pooled.mean(dim=1)  # (N, 3 g^2)
    colour_std = pooled.std(dim=1, unbiased=False)  # (N, 3 g^2)
    if t > 1:
        diff = (x[:, 1:] - x[:, :-1]).abs().mean(dim=2)  # (N, T-1, H, W)
        motion = F.adaptive_avg_pool2d(diff.reshape(n * (t - 1), 1, h, w), grid)
        motion = motion.reshape(n, t - 1, grid * grid).mean(dim=1)  # (N, g^2)
    else:
        motion = torch.zeros(n, grid * grid, dtype=torch.float64)
    return torch.cat([colour_mean, colour_std, motion], dim=1).numpy()


@torch.no_grad()
def i3d_features(model: torch.nn.Module, chunks: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
    """I3D features of chunks for FVD: uint8 (N, T, H, W, 3) -> float64 (N, D).

    Assumes the common FVD TorchScript convention (StyleGAN-V's `i3d_torchscript.pt`, loaded with
    `torch.jit.load`): input float (N, 3, T, H, W) in [-1, 1], called as
    `model(x, rescale=False, resize=True, return_features=True)`, where resize=True makes the model
    itself resize frames to 224 x 224, and the output is (N, 400) logits or (N, 1024) features.
    Chunks run on the model's device in batches of `batch_size`.
    """
    if chunks.dtype != np.uint8 or chunks.ndim != 5 or chunks.shape[-1] != 3:
        raise ValueError(f"chunks must be uint8 (N, T, H, W, 3), got {chunks.dtype} {chunks.shape}")
    try:
        device = next(iter(model.parameters())).device
    except StopIteration:
        device = torch.device("cpu")
    out: list[np.ndarray] = []
    for start in range(0, chunks.shape[0], batch_size):
        part = torch.from_numpy(np.ascontiguousarray(chunks[start : start + batch_size])).to(device)
        x = part.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (n, 3, T, H, W) in [-1, 1]
        feats = model(x, rescale=False, resize=True, return_features=True)
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != x.shape[0]:
            got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(f"I3D model returned {got}; expected ({x.shape[0]}, D) features")
        out.append(feats.double().cpu().numpy())
    return np.concatenate(out, axis=0)


# ----------------------------------------------------------------------------- object metrics


def default_min_pixels(height: int, width: int) -> int:
    """Pixels a colour needs in a frame to count as present: 3 at 32 x 32, scaled with the area
    (at least 1). The smallest synthetic shape covers about 13 pixels at 32 x 32."""
    return max(1, round(3 * height * width / 32**2))


def reference_colours(background: tuple[int, int, int]) -> np.ndarray:
    """(1 + len(COLOURS), 3) RGB of the labels 0 (background), 1.. (PALETTE in COLOURS order)."""
    return np.array([background, *(PALETTE[c] for c in COLOURS)], dtype=np.int32)


def blend_distance(pixels: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """RGB L2 distance of every pixel to the nearest blend of the background and one palette colour (the
    segments between them): int or float (..., 3) -> float64 (...)."""
    p = pixels.astype(np.float64)
    bg = np.asarray(background, dtype=np.float64)
    best = np.full(pixels.shape[:-1], np.inf)
    for colour in COLOURS:
        ab = np.asarray(PALETTE[colour], dtype=np.float64) - bg  # (3,)
        alpha = np.clip(((p - bg) @ ab) / (ab @ ab), 0.0, 1.0)  # (...), share of the colour in the blend
        np.minimum(best, np.linalg.norm(p - (bg + alpha[..., None] * ab), axis=-1), out=best)
    return best


def classify(
    frames: np.ndarray, background: tuple[int, int, int], tolerance: float = DEFAULT_TOLERANCE,
    blend_tolerance: float = DEFAULT_BLEND_TOLERANCE,
) -> np.ndarray:
    """Label every pixel: uint8 (..., H, W, 3) -> int8 (..., H, W).

    BACKGROUND (0) or k + 1 for COLOURS[k], whichever reference colour is nearest in RGB L2 distance,
    when it is within `tolerance`. A pixel farther from every reference is EDGE (-2) when it lies within
    `blend_tolerance` of a blend of the background and a palette colour (`blend_distance`: an
    anti-aliased edge, or chroma subsampling's), else GARBAGE (-1). Edges are not garbage, and count as
    no colour: which colour a dark blend belongs to is ambiguous (half-covered yellow is nearest to
    green, chroma-subsampled yellow to a white blend), and counting them would invent fragments of
    colours that are not there. blend_tolerance 0: no edges (every pixel outside the balls is garbage).
    """
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (..., H, W, 3), got {frames.dtype} {frames.shape}")
    pixels = frames.astype(np.int32)
    best = np.full(frames.shape[:-1], np.iinfo(np.int32).max, dtype=np.int32)  # squared distance
    labels = np.full(frames.shape[:-1], GARBAGE, dtype=np.int8)
    for label, ref in enumerate(reference_colours(background)):
        d2 = ((pixels - ref) ** 2).sum(axis=-1)  # (..., H, W)
        nearer = d2 < best
        best[nearer] = d2[nearer]
        labels[nearer] = label
    outside = best > tolerance**2
    labels[outside] = GARBAGE
    if blend_tolerance > 0 and outside.any():
        labels[outside] = np.where(blend_distance(pixels[outside], background) <= blend_tolerance, EDGE, GARBAGE)
    return labels


@dataclass(frozen=True)
class ObjectStats:
    """Per-frame object statistics of labelled frames (leading dims `...` as in the labels)."""

    presence: np.ndarray
    """bool (..., K): colour COLOURS[k] covers at least min_pixels pixels."""
    centroids: np.ndarray
    """float (..., K, 2): mean (x, y) of the colour's pixel centres, in pixels; NaN where it has none."""
    garbage: np.ndarray
    """float (...,): fraction of GARBAGE pixels."""
    largest_part: np.ndarray
    """float (..., K): share of the colour's pixels in its largest connected part (`largest_part`); NaN
    where it is not present."""

    def mean_largest_part(self) -> np.ndarray:
        """(...,): `largest_part` averaged over the colours present; NaN where none is."""
        count = self.presence.sum(axis=-1)
        total = np.where(self.presence, self.largest_part, 0.0).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def object_stats(labels: np.ndarray, min_pixels: int | None = None) -> ObjectStats:
    """Presence, centroid, garbage fraction and largest part of int8 labels (..., H, W) from `classify`;
    min_pixels None is `default_min_pixels(H, W)`."""
    if labels.ndim < 2:
        raise ValueError(f"labels must be (..., H, W), got {labels.shape}")
    h, w = labels.shape[-2:]
    min_pixels = default_min_pixels(h, w) if min_pixels is None else min_pixels
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")  # pixel centres, (H, W)
    lead = labels.shape[:-2]
    counts = np.empty((*lead, len(COLOURS)))
    centroids = np.full((*lead, len(COLOURS), 2), np.nan)
    for k in range(len(COLOURS)):
        mask = labels == k + 1  # (..., H, W)
        n = mask.sum(axis=(-2, -1))
        counts[..., k] = n
        with np.errstate(invalid="ignore", divide="ignore"):
            centroids[..., k, 0] = (mask * xs).sum(axis=(-2, -1)) / n
            centroids[..., k, 1] = (mask * ys).sum(axis=(-2, -1)) / n
    garbage = (labels == GARBAGE).mean(axis=(-2, -1))
    return ObjectStats(presence=counts >= min_pixels, centroids=centroids, garbage=garbage,
                       largest_part=largest_part(labels, min_pixels))


def component_labels(masks: np.ndarray) -> np.ndarray:
    """8-connected components of bool masks (..., H, W): int64 labels, -1 outside the masks, and inside
    the smallest flat index (within its own mask) of the component's pixels. Numpy only: every pixel
    takes the minimum label of its 3x3 neighbourhood inside the mask until nothing changes."""
    h, w = masks.shape[-2:]
    big = np.iinfo(np.int64).max
    labels = np.where(masks, np.arange(h * w, dtype=np.int64).reshape(h, w), big)
    while True:
        padded = np.pad(labels, [(0, 0)] * (labels.ndim - 2) + [(1, 1), (1, 1)], constant_values=big)
        best = labels.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.minimum(best, padded[..., dy : dy + h, dx : dx + w], out=best)
        best = np.where(masks, best, big)
        if np.array_equal(best, labels):
            return np.where(masks, labels, -1)
        labels = best


def largest_part(labels: np.ndarray, min_pixels: int | None = None) -> np.ndarray:
    """Per colour, the share of its pixels in its largest 8-connected part: float (..., K) from int8
    labels (..., H, W) of `classify`; 1 for a solid shape, 1/n for one broken into n equal fragments;
    NaN where the colour covers fewer than min_pixels pixels (None: `default_min_pixels(H, W)`).
    Presence F1 cannot tell a shape from scattered fragments of its colour; this can."""
    h, w = labels.shape[-2:]
    min_pixels = default_min_pixels(h, w) if min_pixels is None else min_pixels
    flat = labels.reshape(-1, h, w)
    out = np.full((flat.shape[0], len(COLOURS)), np.nan)
    for k in range(len(COLOURS)):
        masks = flat == k + 1  # (F, H, W)
        counts = masks.sum(axis=(1, 2))
        present = np.flatnonzero(counts >= min_pixels)
        if present.size == 0:
            continue
        comp = component_labels(masks[present]).reshape(present.size, -1)
        for row, i in enumerate(present):
            _, sizes = np.unique(comp[row][comp[row] >= 0], return_counts=True)
            out[i, k] = sizes.max() / counts[i]
    return out.reshape(*labels.shape[:-2], len(COLOURS))


def presence_counts(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives, false negatives of bool presence (..., K), summed over K."""
    if pred.shape != true.shape:
        raise ValueError(f"presence arrays differ in shape: {pred.shape} and {true.shape}")
    tp = (pred & true).sum(axis=-1)
    fp = (pred & ~true).sum(axis=-1)
    fn = (~pred & true).sum(axis=-1)
    return tp, fp, fn


def f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """2 tp / (2 tp + fp + fn); 1 when there is nothing to find and nothing was found."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else float(2 * tp / denom)


def presence_f1(pred: np.ndarray, true: np.ndarray) -> float:
    """F1 of bool presence (..., K) against the truth's, over all (frame, colour) pairs."""
    tp, fp, fn = presence_counts(pred, true)
    return f1_from_counts(float(tp.sum()), float(fp.sum()), float(fn.sum()))


def centroid_error(pred: ObjectStats, true: ObjectStats) -> np.ndarray:
    """Euclidean distance in pixels between generated and true centroids, averaged over the colours
    present in both frames: (...,); NaN for frames that share no present colour (a missing or extra
    colour is what presence F1 measures)."""
    both = pred.presence & true.presence  # (..., K)
    dist = np.linalg.norm(pred.centroids - true.centroids, axis=-1)  # (..., K)
    total = np.where(both, dist, 0.0).sum(axis=-1)
    count = both.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
