"""PAN targets (encode) and pixel-aggregation decoding; numpy + opencv + pyclipper, CPU.

encode (../shared/reference/detectors.md §2.2), at input resolution:
- gt_text: instance index map (1..N) of the full polygons (r = 1.0);
- gt_kernel: the same indices on the kernels, D = min(A (1 - r^2) / L, max_shrink_dist), r = kernel_shrink_ratio;
- gt_mask: 1 except inside ignored polygons. Ignored, invalid (< 3 points, |area| < 1) and polygons whose kernel
  vanishes or splits are zeroed in gt_mask and left out of gt_text / gt_kernel: every loss multiplies by the
  mask there, so this equals mmocr's "fill them anyway" while keeping the index maps to kept instances only;
- aux_text = gt_text > 0 (the full text region: the released PANIdentityHead trains against gt_kernels[0], the
  shrink-1.0 kernel), aux_mask = gt_mask. All float32 (H, W).

decode (§2.4, mmocr 1.x PANPostprocessor) from the stride-4 maps:
text = sigmoid > min_text_conf, kernel = sigmoid > min_kernel_conf and text; kernels labelled by 4-connected
components; breadth-first growth from the kernels into unlabelled text pixels whose similarity vector lies
within distance_thresh of the kernel's mean vector (vectorised over the whole frontier per step: a pixel reached
by two kernels in the same step goes to the first in up/down/left/right order); instance score = mean text
probability; keep area >= min_area (stride-4 pixels) and score > score_thresh; quad = minAreaRect, poly = outer
contour. Geometry back to input pixels: a stride-4 pixel j is the 4x4 block of input pixels 4j..4j+3 (the
bilinear x4 upsampling of the loss centres it on 4j + 1.5), so the rectangle / contour through the pixel
centres grows by 3/8 of a stride-4 pixel per side (to the centres of the block's outer input pixels) and maps
x -> 4x + 1.5 (mmocr multiplies by 4, which shifts boxes by -1.5 px and shrinks them by 4 px); then x sx, y sy.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from tcm.config import PANHeadConfig
from tcm.geometry import (
    as_polygon,
    offset_polygon,
    polygon_area,
    rect_quad,
    shrink_polygon,
    to_clockwise,
)
from tcm.types import Detection

STRIDE = 4  # the head's output stride
GROW = (STRIDE - 1) / (2 * STRIDE)  # stride-4 px added per side: pixel centres -> outer input-pixel centres
LARGE_LOGIT = 20.0  # targets_as_outputs: sigmoid(20) = 1 - 2e-9
SUBPIXEL = 8.0  # poly-mode growth on a 1/8 px grid
BASE = 4  # targets_as_outputs: digits per similarity-vector dimension (4^emb_dim distinct vectors)
NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # 4-connectivity (dy, dx), BFS order


def _fill(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], value)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _map(arr: np.ndarray, key: str, channels: int | None = None) -> np.ndarray:
    """One image's (C, h, w) map as float32; a 2-D single map becomes (1, h, w)."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or (channels is not None and a.shape[0] != channels):
        raise ValueError(f"PANCodec.decode: {key} has shape {a.shape}, expected ({channels or 'C'}, h, w)")
    return a


def grow_kernels(
    labels: np.ndarray, text: np.ndarray, emb: np.ndarray, means: np.ndarray, max_distance: float
) -> np.ndarray:
    """Breadth-first pixel aggregation.

    labels (h, w) int32 kernel labels (0 = none), text (h, w) bool, emb (C, h, w), means (N + 1, C) mean vector
    per label (row 0 unused). Grows every label into 4-connected unlabelled text pixels whose vector is within
    max_distance of the label's mean; returns the grown (h, w) labels.
    """
    h, w = labels.shape
    C = emb.shape[0]
    flat = labels.reshape(-1).copy()  # (h*w,)
    text_flat = text.reshape(-1)
    vectors = emb.reshape(C, -1).T  # (h*w, C)
    limit = max_distance * max_distance
    frontier = np.flatnonzero(flat)  # every kernel pixel (interior ones simply find no free neighbour)
    while frontier.size:
        ys, xs = np.divmod(frontier, w)
        cand, lab = [], []
        for dy, dx in NEIGHBOURS:
            ok = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)
            cand.append(frontier[ok] + dy * w + dx)
            lab.append(flat[frontier[ok]])
        nb, nl = np.concatenate(cand), np.concatenate(lab)  # (M,) candidate pixels and their labels
        free = text_flat[nb] & (flat[nb] == 0)
        nb, nl = nb[free], nl[free]
        near = ((vectors[nb] - means[nl]) ** 2).sum(axis=1) < limit
        nb, nl = nb[near], nl[near]
        nb, first = np.unique(nb, return_index=True)  # one label per pixel: the first to reach it
        flat[nb] = nl[first]
        frontier = nb
    return flat.reshape(h, w)


class PANCodec:
    def __init__(self, cfg: PANHeadConfig):
        self.cfg = cfg

    # ------------------------------------------------------------------------------------------------ encode

    def encode(
        self, polygons: list[np.ndarray], ignore: list[bool], height: int, width: int
    ) -> dict[str, np.ndarray]:
        cfg = self.cfg
        if len(polygons) != len(ignore):
            raise ValueError(f"PANCodec.encode: {len(polygons)} polygons but {len(ignore)} ignore flags")
        H, W = height, width
        text = np.zeros((H, W), np.int32)
        kernel = np.zeros((H, W), np.int32)
        mask = np.ones((H, W), np.uint8)
        label = 0
        for poly, ignored in zip(polygons, ignore, strict=True):
            points = as_polygon(poly)
            usable = points.shape[0] >= 3 and bool(np.isfinite(points).all())
            shrunk = None
            if usable and not ignored and polygon_area(points) >= 1.0:
                shrunk = shrink_polygon(points, cfg.kernel_shrink_ratio, cfg.max_shrink_dist)
            if shrunk is None:  # ignored, degenerate, or the kernel vanished / split
                if usable:
                    _fill(mask, points, 0)
                continue
            label += 1
            _fill(text, points, label)
            _fill(kernel, shrunk, label)
        gt_mask = mask.astype(np.float32)
        return {
            "gt_text": text.astype(np.float32),
            "gt_kernel": kernel.astype(np.float32),
            "gt_mask": gt_mask,
            "aux_text": (text > 0).astype(np.float32),  # released: kernel 0 = shrink ratio 1.0 = text region
            "aux_mask": gt_mask.copy(),
        }

    # ------------------------------------------------------------------------------------------------ decode

    def _polygon(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Outline of one instance's stride-4 pixels, in stride-4 pixel units (clockwise)."""
        y0, x0 = ys.min(), xs.min()
        crop = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), np.uint8)
        crop[ys - y0, xs - x0] = 1
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64) + (x0, y0)  # (P, 2)
        if len(outline) >= 3 and polygon_area(outline) > 0:
            pieces = offset_polygon(outline, GROW, precision=SUBPIXEL)
            if len(pieces) == 1:
                return to_clockwise(pieces[0])
        rect = cv2.minAreaRect(np.stack([xs, ys], axis=1).astype(np.float32))  # a 1-pixel-thin instance
        return rect_quad(((rect[0]), (rect[1][0] + 2 * GROW, rect[1][1] + 2 * GROW), rect[2]))

    def decode(
        self, outputs: dict[str, np.ndarray], scale: tuple[float, float] = (1.0, 1.0)
    ) -> list[Detection]:
        cfg = self.cfg
        text_logits = _map(outputs["text_logits"], "text_logits", 1)[0]  # (h, w)
        kernel_logits = _map(outputs["kernel_logits"], "kernel_logits", 1)[0]  # (h, w)
        emb = _map(outputs["embedding"], "embedding", cfg.emb_dim)  # (C, h, w)
        h, w = text_logits.shape
        text = text_logits > _logit(cfg.min_text_conf)
        kernel = (kernel_logits > _logit(cfg.min_kernel_conf)) & text
        n, kernel_labels = cv2.connectedComponents(kernel.view(np.uint8), connectivity=4)
        if n <= 1:
            return []
        flat_kernel = kernel_labels.reshape(-1)  # (h*w,)
        counts = np.bincount(flat_kernel, minlength=n).clip(min=1)  # (n,)
        means = np.stack([np.bincount(flat_kernel, weights=e.reshape(-1), minlength=n) for e in emb], axis=1)
        means /= counts[:, None]  # (n, C) mean vector per kernel label
        labels = grow_kernels(kernel_labels.astype(np.int32), text, emb, means, cfg.distance_thresh)
        flat = labels.reshape(-1)
        area = np.bincount(flat, minlength=n)  # (n,) pixels per instance
        prob = _sigmoid(text_logits).reshape(-1)
        score = np.bincount(flat, weights=prob, minlength=n) / area.clip(min=1)
        keep = [i for i in range(1, n) if area[i] >= cfg.min_area and score[i] > cfg.score_thresh]
        if not keep:
            return []
        order = np.argsort(flat, kind="stable")  # pixels grouped by label
        starts = np.concatenate([[0], np.cumsum(area)])
        sx, sy = scale
        factor = np.array([STRIDE * sx, STRIDE * sy])
        offset = np.array([(STRIDE - 1) / 2 * sx, (STRIDE - 1) / 2 * sy])  # pixel centre j -> 4j + 1.5
        limit = np.array([w * STRIDE * sx, h * STRIDE * sy])
        detections = []
        for i in keep:
            pix = order[starts[i] : starts[i + 1]]
            ys, xs = np.divmod(pix, w)
            if cfg.mode == "quad":
                (cx, cy), (rw, rh), angle = cv2.minAreaRect(np.stack([xs, ys], axis=1).astype(np.float32))
                points = rect_quad(((cx, cy), (rw + 2 * GROW, rh + 2 * GROW), angle))
            else:
                points = self._polygon(ys, xs)
            points = np.clip(points * factor + offset, 0, limit)  # (P, 2) original-image pixels
            detections.append(Detection(points, float(score[i])))
        return detections

    # ------------------------------------------------------------------------------------------------ check

    def targets_as_outputs(self, targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A perfect network at stride 4: text / kernel logits +-20 and one similarity vector per instance.

        Blocks of 4x4 input pixels: text where more than half of the block is text, kernel where any pixel of the
        block is kernel (a thin kernel must survive the downsampling), labels = the largest index in the block.
        Instance i gets the base-4 digits of i - 1 times 2 x distance_thresh as its vector, so two instances
        (up to 4^emb_dim of them) are at least 2 x distance_thresh apart and never aggregate into each other.
        """
        cfg = self.cfg
        gt_text = np.asarray(targets["gt_text"])
        gt_kernel = np.asarray(targets["gt_kernel"])
        H, W = gt_text.shape
        h, w = -(-H // STRIDE), -(-W // STRIDE)

        def blocks(a: np.ndarray) -> np.ndarray:  # (H, W) -> (h, w, 16), zero padded
            padded = np.zeros((h * STRIDE, w * STRIDE), a.dtype)
            padded[:H, :W] = a
            return padded.reshape(h, STRIDE, w, STRIDE).transpose(0, 2, 1, 3).reshape(h, w, STRIDE * STRIDE)

        text = blocks(gt_text > 0.5).mean(axis=2) > 0.5  # (h, w)
        kernel = blocks(gt_kernel > 0.5).any(axis=2) & text  # (h, w)
        labels = blocks(gt_text.astype(np.int64)).max(axis=2)  # (h, w)
        digits = (np.maximum(labels - 1, 0)[..., None] // BASE ** np.arange(cfg.emb_dim)) % BASE  # (h, w, C)
        emb = digits * (2.0 * cfg.distance_thresh) * (labels > 0)[..., None]  # (h, w, C)

        def logits(b: np.ndarray) -> np.ndarray:
            return np.where(b, LARGE_LOGIT, -LARGE_LOGIT).astype(np.float32)[None]  # (1, h, w)

        return {
            "text_logits": logits(text),
            "kernel_logits": logits(kernel),
            "embedding": emb.transpose(2, 0, 1).astype(np.float32),  # (C, h, w)
        }
