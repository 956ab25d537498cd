"""Real-photo backgrounds for the benchmark dataset v2: the shipped photos (builder/data/backgrounds/, Apache-2.0,
see its README) or a folder of your own, cut into random square crops, flipped and colour-jittered.

numpy + OpenCV only (the agent's tests import builder.data.synth*, see builder.data.synth).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

SHIPPED_DIR = Path(__file__).resolve().parent / "backgrounds"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_SIDE = 1024  # photos are downscaled once on load: crops stay fast, 320 px crops keep detail
MIN_CROP = 0.3  # a crop's side is 30-100% of the photo's shorter side


class BackgroundError(ValueError):
    """No usable background photo in the folder given."""


@lru_cache(maxsize=4)
def load_photos(folder: str | None = None) -> tuple[np.ndarray, ...]:
    """Every photo in `folder` (default: the shipped ones) as BGR uint8, sorted by file name, longest side <= 1024."""
    root = Path(folder) if folder is not None else SHIPPED_DIR
    files = sorted(p for p in root.glob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    photos = []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None or min(img.shape[:2]) < 32:
            continue
        scale = MAX_SIDE / max(img.shape[:2])
        if scale < 1:
            img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        photos.append(img)
    if not photos:
        raise BackgroundError(f"no readable photos ({', '.join(PHOTO_SUFFIXES)}, at least 32 px) in {root}")
    return tuple(photos)


def random_crop(rng: np.random.Generator, photos: tuple[np.ndarray, ...], size: int) -> np.ndarray:
    """A random square crop of a random photo, resized to size x size, maybe flipped (BGR uint8)."""
    photo = photos[int(rng.integers(0, len(photos)))]
    h, w = photo.shape[:2]
    side = max(8, int(min(h, w) * rng.uniform(MIN_CROP, 1.0)))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = photo[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    out = cv2.resize(crop, (size, size), interpolation=interp)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def colour_jitter(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation and a small hue shift (small: the class colours must stay apart)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-4, 4)) % 180
    hsv[..., 1] *= rng.uniform(0.6, 1.3)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    mean = float(out.mean())
    out = (out - mean) * rng.uniform(0.7, 1.25) + mean * rng.uniform(0.75, 1.2)
    return out


def photo_background(rng: np.random.Generator, photos: tuple[np.ndarray, ...], size: int) -> np.ndarray:
    """One background: a crop of a photo, colour-jittered, as float32 BGR (size, size, 3)."""
    return colour_jitter(rng, random_crop(rng, photos, size))
