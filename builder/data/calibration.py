"""Calibration sets for INT8 post-training quantization.

Calibration decides the outcome of PTQ (docs/CONVERSION.md): the converter records the range of every
activation over these images, so they must be real images of the deployment domain, preprocessed
exactly as at run time (agent.inference.preprocess.letterbox). Noise calibration clipped the stride-8 class
output at zero point 255 and lost all accuracy in our measurements.

- `find_images`: every image under a directory, recursively, or inside a .tar.gz / .tgz / .tar.
- `sample_images`: deterministic choice of N (sorted paths, seeded permutation).
- `load_calibration`: the (N, S, S, 3) uint8 RGB canvases handed to the converter.
- `build_calibration_set`: `edge-builder calibration build`, a sample of a dataset (images/ and their YOLO labels/,
  which the converter's coverage check counts per stride) by one of three subset strategies (`STRATEGIES`):
  `class` (default) balanced greedily over classes, `scale` the same over the object-size bands of
  builder.data.strides (stride 8/16/32 at the model's input size), `random` a seeded uniform sample.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from agent.inference.preprocess import letterbox, load_image
from builder.data.dataset import DatasetError, Item, load_dataset
from builder.data.strides import STRIDES, box_size, stride_for_size
from builder.data.yolo_view import label_rows

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
RECOMMENDED = 300  # the guide's "300+ calibration images"
STRATEGIES = ("class", "random", "scale")  # calibration subset strategies; "class" is the default


class CalibrationError(ValueError):
    """No usable calibration images (missing, empty, image-less, unreadable archive)."""


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and (name.endswith((".tar.gz", ".tgz", ".tar")))


@contextmanager
def open_source(src: Path) -> Iterator[Path]:
    """A directory holding the calibration images: `src` itself, or a temp extraction of an archive."""
    src = Path(src)
    if not src.exists():
        raise CalibrationError(f"calibration source {src} does not exist")
    if src.is_dir():
        yield src
        return
    if not is_archive(src):
        raise CalibrationError(f"{src} is neither a directory nor a .tar.gz/.tgz/.tar archive")
    tmp = Path(tempfile.mkdtemp(prefix="calib-"))
    try:
        try:
            with tarfile.open(src) as tar:
                # filter="data": no absolute paths, no "..", no links outside, no devices.
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise CalibrationError(f"cannot extract {src}: {exc}") from exc
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_images(root: Path) -> list[Path]:
    """Every image file under `root` (recursing into subfolders), sorted; hidden files skipped."""
    return sorted(
        p
        for p in Path(root).rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def sample_images(images: list[Path], n: int, seed: int = 0) -> list[Path]:
    """Deterministic: the same files and seed always give the same sample, in sorted order."""
    images = sorted(images)
    if n <= 0 or len(images) <= n:
        return images
    idx = np.random.default_rng(seed).permutation(len(images))[:n]
    return [images[i] for i in sorted(idx)]


def load_calibration(
    src: Path,
    imgsz: int,
    n: int = RECOMMENDED,
    seed: int = 0,
    pad_value: int = 114,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Letterboxed RGB uint8 canvases (N, imgsz, imgsz, 3) and the relative names of the images used."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    with open_source(Path(src)) as root:
        all_images = find_images(root)
        if not all_images:
            raise CalibrationError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {src} (searched subfolders too)"
            )
        chosen = sample_images(all_images, n, seed)
        batch = np.empty((len(chosen), imgsz, imgsz, 3), dtype=np.uint8)
        used: list[str] = []
        bad: list[str] = []
        for i, p in enumerate(chosen):
            try:
                letterbox(load_image(str(p)), imgsz, pad_value=pad_value, out=batch[len(used)])
                used.append(str(p.relative_to(root)))
            except ValueError:
                bad.append(str(p.relative_to(root)))
            if progress:
                progress(i + 1, len(chosen))
        if bad:
            warn(f"{len(bad)} unreadable calibration image(s) skipped, e.g. {bad[0]}")
        if not used:
            raise CalibrationError(f"none of the {len(chosen)} images under {src} could be read")
        if len(used) < RECOMMENDED:
            warn(
                f"only {len(used)} calibration images (300+ recommended): INT8 ranges may not cover "
                "what the camera will see; add representative images"
            )
        return batch[: len(used)], used


def build_calibration_set(
    dataset_path: Path,
    out: Path,
    n: int = RECOMMENDED,
    seed: int = 0,
    split: str = "train",
    strategy: str = "class",
    imgsz: int = 320,
) -> dict[str, object]:
    """Copy a sample of a dataset's images into `out`/images, their labels into `out`/labels (YOLO), and write
    `out`/calibration.json (strategy, images per class, images and objects per stride band at `imgsz`).

    `class` (default): repeatedly take an image containing the class with the fewest picks so far (images
    without objects fill the rest, at most 10%), so every class contributes to the ranges — the failure we
    measured was a head level that saw no positives during calibration. `scale`: the same greedy rule over
    the stride bands of the objects at `imgsz` (builder.data.strides), so every head level sees objects.
    `random`: a seeded uniform sample of all images, objects or not (the baseline the others are judged by).
    """
    check_strategy(strategy)
    try:
        ds = load_dataset(Path(dataset_path))
        items = ds.items(split)
    except (DatasetError, OSError, KeyError) as exc:
        raise CalibrationError(f"dataset {dataset_path}: {exc}") from exc
    class_names = list(ds.class_names)
    if not items:
        raise CalibrationError(f"dataset {dataset_path} has no {split} images")
    classes = [_classes_of(it) for it in items]
    bands = [image_bands(it, imgsz) for it in items]
    picked = select_images(strategy, classes, bands, len(class_names), n, seed)
    if not picked:
        raise CalibrationError(f"no usable images in {dataset_path}")
    chosen = [items[i] for i in sorted(picked)]
    names = _copy_images(chosen, Path(out))
    per_class = count_keys([classes[i] for i in picked], range(len(class_names)))
    info: dict[str, object] = {
        "dataset": str(dataset_path),
        "split": split,
        "seed": seed,
        "strategy": strategy,
        "imgsz": imgsz,
        "images": len(names),
        "images_per_class": {class_names[k] if k < len(class_names) else str(k): v for k, v in per_class.items()},
        "images_per_band": {str(s): v for s, v in count_keys([bands[i] for i in picked], STRIDES).items()},
        "objects_per_band": {str(s): v for s, v in objects_per_band(chosen, imgsz).items()},
        "files": names,
    }
    (Path(out) / "calibration.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise CalibrationError(f"unknown calibration strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")


def select_images(
    strategy: str, classes: list[set[int]], bands: list[set[int]], num_classes: int, n: int, seed: int = 0
) -> list[int]:
    """Indices of at most `n` images by `strategy` (build_calibration_set), from each image's classes and bands."""
    check_strategy(strategy)
    if strategy == "random":
        return random_sample(len(classes), n, seed)
    keys, num_keys = (classes, num_classes) if strategy == "class" else (bands, 0)
    return balanced_sample(keys, num_keys, n, seed)[0]


def random_sample(count: int, n: int, seed: int = 0) -> list[int]:
    """A seeded uniform sample of `n` of `count` indices, sorted (all of them when n >= count)."""
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(count)[: max(0, n)])


def object_bands(item: Item, imgsz: int) -> list[int]:
    """The stride band of each object once the letterbox scales the image's longest side to `imgsz`."""
    k = imgsz / max(item.width, item.height, 1)
    wh = np.asarray(item.boxes, dtype=np.float64).reshape(-1, 4)
    return [stride_for_size(box_size((x1 - x0) * k, (y1 - y0) * k)) for x0, y0, x1, y1 in wh.tolist()]


def image_bands(item: Item, imgsz: int) -> set[int]:
    return set(object_bands(item, imgsz))


def count_keys(sets: list[set[int]], keys: Iterable[int]) -> dict[int, int]:
    """How many of `sets` contain each key (every key of `keys` listed, 0 when none)."""
    counts = {int(k): 0 for k in keys}
    for s in sets:
        for k in s:
            counts[int(k)] = counts.get(int(k), 0) + 1
    return counts


def objects_per_band(items: list[Item], imgsz: int) -> dict[int, int]:
    counts = dict.fromkeys(STRIDES, 0)
    for it in items:
        for s in object_bands(it, imgsz):
            counts[s] += 1
    return counts


def _classes_of(item: Item) -> set[int]:
    return {int(c) for c in np.asarray(item.classes).reshape(-1)}


def balanced_sample(
    image_classes: list[set[int]], num_classes: int, n: int, seed: int = 0
) -> tuple[list[int], dict[int, int]]:
    """Indices of at most `n` images, class-balanced greedily (see build_calibration_set), and picks per class."""
    order = list(np.random.default_rng(seed).permutation(len(image_classes)))
    by_class: dict[int, list[int]] = {k: [] for k in range(num_classes)}
    empty: list[int] = []
    for i in order:
        if not image_classes[i]:
            empty.append(int(i))
        for c in sorted(image_classes[i]):
            by_class.setdefault(c, []).append(int(i))
    picked: list[int] = []
    taken: set[int] = set()
    counts = dict.fromkeys(by_class, 0)
    n = min(n, len(image_classes))
    while len(picked) < n:
        open_classes = [c for c in by_class if by_class[c]]
        if not open_classes:
            break
        i = by_class[min(open_classes, key=lambda k: (counts[k], k))].pop(0)
        if i in taken:
            continue
        taken.add(i)
        picked.append(i)
        for c in image_classes[i]:
            counts[c] = counts.get(c, 0) + 1
    picked += empty[: max(0, min(max(0, n // 10), n - len(picked)))]
    return picked, counts


def _copy_images(items: list[Item], out: Path) -> list[str]:
    """Copy into out/images with a numbered prefix (keeps same-named files from different folders apart) and write
    each image's boxes as a YOLO label in out/labels (the converter's coverage check reads them); the new names."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    names = []
    for j, item in enumerate(items):
        dst = out / "images" / f"{j:05d}_{item.image.name}"
        shutil.copy2(item.image, dst)
        rows = label_rows(item)
        (out / "labels" / f"{dst.stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
        names.append(dst.name)
    return names
