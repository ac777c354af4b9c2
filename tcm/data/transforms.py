"""Polygon-aware image transforms for training and test (numpy + OpenCV + shapely; no Ray).

Coordinates follow OpenCV's pixel-index convention: pixel (i, j) is the point x=i, y=j, so `cv2.warpAffine` with a
matrix M moves pixel content exactly where M moves polygon vertices. A horizontal flip is x -> W - 1 - x.

Training recipe (`random_augment`) = DBNet / TCM (detectors.md §1.4, tcm.md §2): flip, rotate, scale (imgaug
triple), then the DB random crop that never cuts a care instance, resize the crop to fit `crop_size` keeping the
ratio and paste it top-left on a zero canvas. The whole chain is one affine matrix, so the image is resampled
once, straight into the crop_size x crop_size canvas (a 3x upscaled 1280x720 image is never materialised), and
the polygons are moved by the very same matrix.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from PIL import Image

Polygons = list[np.ndarray]  # N polygons, each (P, 2) float64 x, y


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's training augmentation (DBNet official / TCM `train_pipeline_r50dcnv2`)."""

    crop_size: int = (
        640  # EastRandomCrop / RandomCropData 640x640 (DB, TCM); must match the model's input_size
    )
    flip_prob: float = 0.5  # imgaug Fliplr(0.5)
    max_rotate_deg: float = 10.0  # imgaug Affine(rotate=U[-10, 10])
    scale_range: tuple[float, float] = (0.5, 3.0)  # imgaug Resize(U[0.5, 3.0]), one factor for both axes
    min_crop_side_ratio: float = 0.1  # RandomCropData: crop side >= 0.1 x image side
    max_tries: int = (
        10  # RandomCropData tries before falling back to the whole image (DB; PaddleOCR IC15 uses 50)
    )
    brightness: float = 32 / 255  # ColorJitter(brightness=32/255): factor U[1 - b, 1 + b] (mmocr / TCM)
    saturation: float = 0.5  # ColorJitter(saturation=0.5): factor U[0.5, 1.5]

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        checks = {
            "crop_size must be a positive multiple of 32 (the backbone's stride)": self.crop_size > 0
            and self.crop_size % 32 == 0,
            "flip_prob must be in [0, 1]": 0.0 <= self.flip_prob <= 1.0,
            "max_rotate_deg must be >= 0": self.max_rotate_deg >= 0,
            "scale_range must be 0 < lo <= hi": 0 < lo <= hi,
            "min_crop_side_ratio must be in (0, 1]": 0 < self.min_crop_side_ratio <= 1,
            "max_tries must be >= 0": self.max_tries >= 0,
            "brightness and saturation must be >= 0": self.brightness >= 0 and self.saturation >= 0,
        }
        bad = [msg for msg, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"AugmentConfig({self}): " + "; ".join(bad))


# ---------------------------------------------------------------------------------------------------------------
# decoding


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 BGR, EXIF orientation ignored (annotations refer to the stored pixels).

    OpenCV first (fast); formats it cannot read (GIF) go through PIL, first frame.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    if image is not None:
        return image
    try:
        with Image.open(io.BytesIO(data)) as pil:  # PIL never applies EXIF orientation by itself
            pil.seek(0)
            rgb = np.asarray(pil.convert("RGB"))  # (H, W, 3) RGB
    except Exception as err:  # noqa: BLE001 - any decoder failure is reported the same way
        head = bytes(data[:8]).hex()
        raise ValueError(f"cannot decode image ({len(data)} bytes, header {head}): {err}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])  # RGB -> BGR


# ---------------------------------------------------------------------------------------------------------------
# affine helpers (3x3 homogeneous matrices acting on column vectors (x, y, 1))


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _scale(sx: float, sy: float) -> np.ndarray:
    return np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(P, 2) points -> (P, 2) points moved by a 3x3 affine matrix."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def transform_polygons(polygons: Polygons, matrix: np.ndarray) -> Polygons:
    return [_apply(matrix, np.asarray(p, dtype=np.float64).reshape(-1, 2)) for p in polygons]


def _extent(matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bounding box (x0, y0, x1, y1) of the image's pixel centres after `matrix`."""
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64)
    moved = _apply(matrix, corners)  # (4, 2)
    return np.concatenate([moved.min(axis=0), moved.max(axis=0)])


def flip_matrix(width: int) -> np.ndarray:
    """Horizontal flip of an image `width` pixels wide: x -> width - 1 - x."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def rotate_expand_matrix(width: int, height: int, angle_deg: float) -> tuple[np.ndarray, int, int]:
    """Rotation about the image centre (counter-clockwise on screen for angle > 0) on a canvas grown so that no
    pixel is cut. Returns the 3x3 matrix and the new (width, height)."""
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    rot = np.vstack([cv2.getRotationMatrix2D(centre, angle_deg, 1.0), [0.0, 0.0, 1.0]])  # (3, 3)
    x0, y0, x1, y1 = _extent(rot, width, height)
    matrix = _translate(-x0, -y0) @ rot
    return matrix, _size(x1 - x0), _size(y1 - y0)


def _size(span: float) -> int:
    """Pixels needed to hold pixel centres 0..span (tolerates float noise from rotations by 0)."""
    return int(math.ceil(span - 1e-6)) + 1


# ---------------------------------------------------------------------------------------------------------------
# the DB random crop


def _free_regions(free: np.ndarray) -> list[np.ndarray]:
    """Indices where `free` is True, split into runs of consecutive indices."""
    idx = np.flatnonzero(free)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1) + 1
    return np.split(idx, breaks)


def _pick_edges(regions: list[np.ndarray], rng: np.random.Generator) -> tuple[int, int]:
    """Two crop edges in free gaps: from two different gaps when there are several (region-wise), else anywhere."""
    if len(regions) > 1:
        a, b = rng.choice(len(regions), size=2, replace=False)
        lo, hi = int(rng.choice(regions[a])), int(rng.choice(regions[b]))
    else:
        lo, hi = (int(v) for v in rng.choice(regions[0], size=2))
    return min(lo, hi), max(lo, hi)


def _bboxes(polygons: Polygons) -> np.ndarray:
    """(N, 4) axis-aligned boxes x0, y0, x1, y1 of N polygons."""
    if not polygons:
        return np.zeros((0, 4))
    return np.array([np.concatenate([p.min(axis=0), p.max(axis=0)]) for p in polygons])


def random_crop_area(
    care: Polygons, width: int, height: int, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[int, int, int, int]:
    """DB RandomCropData: (x, y, w, h) of a crop whose edges lie where no care polygon's box is, so every care
    instance is either wholly inside or wholly outside. Needs sides >= min_crop_side_ratio of the image and at
    least one care instance inside; after max_tries it falls back to the whole image."""
    boxes = _bboxes(care)  # (N, 4)
    taken_x = np.zeros(width, dtype=bool)
    taken_y = np.zeros(height, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        lo_x, hi_x = np.clip([math.floor(x0), math.ceil(x1)], 0, width - 1)
        lo_y, hi_y = np.clip([math.floor(y0), math.ceil(y1)], 0, height - 1)
        taken_x[lo_x : hi_x + 1] = True
        taken_y[lo_y : hi_y + 1] = True
    free_x, free_y = _free_regions(~taken_x), _free_regions(~taken_y)
    if not free_x or not free_y:
        return 0, 0, width, height
    for _ in range(cfg.max_tries):
        x_lo, x_hi = _pick_edges(free_x, rng)
        y_lo, y_hi = _pick_edges(free_y, rng)
        if x_hi - x_lo < cfg.min_crop_side_ratio * width or y_hi - y_lo < cfg.min_crop_side_ratio * height:
            continue
        # the crop holds pixels x_lo .. x_hi - 1 (x_hi is free, so nothing care ends beyond it)
        inside = (
            (boxes[:, 2] >= x_lo)
            & (boxes[:, 0] <= x_hi - 1)
            & (boxes[:, 3] >= y_lo)
            & (boxes[:, 1] <= y_hi - 1)
        )
        if inside.any():
            return x_lo, y_lo, x_hi - x_lo, y_hi - y_lo
    return 0, 0, width, height


# ---------------------------------------------------------------------------------------------------------------
# clipping polygons to the canvas


def clip_polygons(
    polygons: Polygons, ignore: list[bool], x_max: float, y_max: float
) -> tuple[Polygons, list[bool]]:
    """Keep the parts of polygons inside [0, x_max] x [0, y_max]: inside ones unchanged, outside ones dropped,
    crossing ones cut exactly (shapely intersection; a non-convex polygon cut in two gives two instances)."""
    eps = 1e-6  # float noise of the matrices, far below a pixel
    out: Polygons = []
    out_ignore: list[bool] = []
    rect = shapely.box(0.0, 0.0, x_max, y_max)
    for poly, ign in zip(polygons, ignore, strict=True):
        x0, y0 = poly.min(axis=0)
        x1, y1 = poly.max(axis=0)
        if x0 >= -eps and y0 >= -eps and x1 <= x_max + eps and y1 <= y_max + eps:
            out.append(np.clip(poly, 0.0, [x_max, y_max]))
            out_ignore.append(ign)
            continue
        if x1 < 0 or y1 < 0 or x0 > x_max or y0 > y_max:
            continue
        shape = shapely.make_valid(shapely.Polygon(poly))
        parts = shapely.get_parts(shapely.intersection(shape, rect))
        for part in parts:
            if isinstance(part, shapely.Polygon) and part.area > 0:
                ring = np.asarray(part.exterior.coords)[:-1]  # (P, 2) without the closing repeat
                out.append(ring)
                out_ignore.append(ign)
    return out, out_ignore


# ---------------------------------------------------------------------------------------------------------------
# the training augmentation


def _warp(image: np.ndarray, matrix: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Resample `image` through a 3x3 affine matrix into (out_h, out_w); zero outside the source.

    While the matrix shrinks by more than 2x, the source is first halved with `cv2.pyrDown` (Gaussian blur +
    decimation): a plain bilinear warp at 0.2x would skip pixels and alias thin strokes, and the warp then reads
    a smaller image. pyrDown puts source pixel 2x at x, so the matrix gains a factor 2."""
    zoom = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    while zoom < 0.5 and min(image.shape[:2]) >= 2:
        image = cv2.pyrDown(image)
        matrix = matrix @ _scale(2.0, 2.0)
        zoom *= 2.0
    return cv2.warpAffine(
        image,
        matrix[:2],
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


@dataclass(frozen=True)
class AugmentPlan:
    """The sampled geometry of one augmentation: `matrix` maps source pixels to the output canvas, whose pixels
    [0, content_w) x [0, content_h) hold image content and the rest is zero padding."""

    matrix: np.ndarray  # (3, 3)
    content_w: int
    content_h: int
    x_max: float  # polygons are clipped to [0, x_max] x [0, y_max]: the image of the crop's pixel centres
    y_max: float
    crop: tuple[int, int, int, int]  # (x, y, w, h) in the flipped/rotated/scaled image
    extent: tuple[int, int]  # (w, h) of that image: crop == (0, 0, *extent) is the whole-image fallback


def sample_plan(
    width: int,
    height: int,
    polygons: Polygons,
    ignore: list[bool],
    rng: np.random.Generator,
    cfg: AugmentConfig,
) -> AugmentPlan:
    """Draw flip, rotation, scale and crop (in that order, as imgaug then RandomCropData) for one image."""
    matrix = np.eye(3)
    if rng.random() < cfg.flip_prob:
        matrix = flip_matrix(width)
    angle = rng.uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg)
    rot, w1, h1 = rotate_expand_matrix(width, height, angle)
    s = rng.uniform(*cfg.scale_range)
    matrix = _scale(s, s) @ rot @ matrix
    w2, h2 = _size(s * (w1 - 1)), _size(s * (h1 - 1))
    moved = transform_polygons(polygons, matrix)
    care = [p for p, ign in zip(moved, ignore, strict=True) if not ign]
    x, y, w, h = random_crop_area(care, w2, h2, rng, cfg)
    S = cfg.crop_size
    r = min(S / w, S / h)  # fit the crop into S x S keeping its aspect ratio
    matrix = _scale(r, r) @ _translate(-x, -y) @ matrix
    x_max, y_max = r * (w - 1), r * (h - 1)
    # content = pixels a clipped polygon can round onto (centres up to x_max + 0.5); the rest is padding
    content_w, content_h = min(S, math.floor(x_max + 0.5) + 1), min(S, math.floor(y_max + 0.5) + 1)
    return AugmentPlan(matrix, content_w, content_h, x_max, y_max, (x, y, w, h), (w2, h2))


def apply_plan(
    image: np.ndarray, polygons: Polygons, ignore: list[bool], plan: AugmentPlan, size: int
) -> tuple[np.ndarray, Polygons, list[bool]]:
    """Warp the image into a size x size canvas (zero beyond the content) and move/clip the polygons alike."""
    out = _warp(image, plan.matrix, size, size)
    out[plan.content_h :, :] = 0  # the warp also samples real pixels beyond the crop: blank them (padding)
    out[:, plan.content_w :] = 0
    moved = transform_polygons(polygons, plan.matrix)
    kept, kept_ignore = clip_polygons(moved, list(ignore), plan.x_max, plan.y_max)
    return out, kept, kept_ignore


def random_augment(
    image: np.ndarray, polygons: Polygons, ignore: list[bool], rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, Polygons, list[bool]]:
    """Flip, rotate (canvas expanded), scale, DB crop keeping care text whole, resize to fit and pad top-left.

    image: (H, W, 3) uint8; polygons: N arrays (P, 2) in its pixels. Returns a (S, S, 3) uint8 image with S =
    cfg.crop_size, the surviving polygons in its pixels and their ignore flags (fully outside: dropped; partly
    outside: clipped to the image content)."""
    H, W = image.shape[:2]
    polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    plan = sample_plan(W, H, polygons, list(ignore), rng, cfg)
    return apply_plan(image, polygons, list(ignore), plan, cfg.crop_size)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """torchvision-style ColorJitter(brightness, saturation) on a BGR uint8 image, in random order.

    Pixel-wise, so it commutes with the geometry; applied after the crop it touches 640x640 pixels, not the
    whole (possibly 3x upscaled) image. Zero padding stays zero."""
    b = rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
    s = rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
    for op in rng.permutation(2):
        if op == 0:
            image = cv2.convertScaleAbs(image, alpha=b)  # saturate(b * x)
        else:
            gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)  # (H, W, 3)
            image = cv2.addWeighted(image, s, gray, 1.0 - s, 0.0)  # blend with grey, saturated to uint8
    return image


# ---------------------------------------------------------------------------------------------------------------
# normalisation and test-time resize


def normalize(
    image_bgr: np.ndarray,
    mean: tuple[float, float, float] = (
        122.67891434,
        116.66876762,
        104.00698793,
    ),  # DetectorConfig.pixel_mean
    std: tuple[float, float, float] = (58.395, 57.12, 57.375),  # DetectorConfig.pixel_std (mmocr, RGB)
) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (3, H, W) float32 RGB, (x - mean) / std per channel."""
    H, W = image_bgr.shape[:2]
    out = np.empty((3, H, W), dtype=np.float32)
    blue, green, red = cv2.split(image_bgr)  # contiguous planes: ~5x faster than a strided [..., ::-1] cast
    for c, plane in enumerate((red, green, blue)):
        out[c] = plane
        out[c] -= np.float32(mean[c])
        out[c] *= np.float32(1.0 / std[c])
    return out


def keep_ratio_factor(width: int, height: int, long_side: int, short_side: int) -> float:
    """mmcv Resize(scale=(long_side, short_side), keep_ratio=True): min(L / long edge, S / short edge)."""
    return min(long_side / max(width, height), short_side / min(width, height))


def resize_for_test(
    image: np.ndarray, long_side: int, short_side: int, max_side: int | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Keep-ratio test resize (detectors.md §1.5), then zero-pad bottom/right to multiples of 32.

    `max_side` additionally caps the longer resized side (to fit a fixed canvas). Returns the padded image and
    `scale` = (sx, sy) = original / resized size per axis: multiply network-input coordinates by it to get back
    to original pixels (the `scale` argument of `Codec.decode`)."""
    H, W = image.shape[:2]
    factor = keep_ratio_factor(W, H, long_side, short_side)
    if max_side is not None:
        factor = min(factor, max_side / max(W, H))
    new_w, new_h = max(1, int(W * factor + 0.5)), max(1, int(H * factor + 0.5))  # mmcv rounding
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    padded = pad_image(resized, _ceil32(new_h), _ceil32(new_w))
    return padded, (W / new_w, H / new_h)


def pad_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad (H, W, C) bottom/right to (height, width); an image larger than that is an error."""
    H, W = image.shape[:2]
    if H > height or W > width:
        raise ValueError(f"pad_image: image {W}x{H} does not fit a {width}x{height} canvas")
    out = np.zeros((height, width, *image.shape[2:]), dtype=image.dtype)
    out[:H, :W] = image
    return out


def _ceil32(n: int) -> int:
    return -(-n // 32) * 32
