"""Generators of small on-disk datasets for tests (plain functions; other test modules import them).

- make_kaggle_dir / make_kaggle_zip: Kaggle's layout (train.csv `id,v1..v512,glasses`, unlabelled
  test.csv `id,v1..v512`, faces-spring-2020/faces-spring-2020/face-<id>.png), real CSVs and PNGs.
- make_folders: PATH/glasses, PATH/no_glasses (or no-glasses) of mixed formats + optional labels.csv.
- flip_folder_labels: plant label errors in a folders source (files moved to the other class folder).
- write_corrupt_files: truncated PNG/JPEG, a text file named .png, an empty file.
- face_image: a deterministic synthetic "face" (with or without dark glasses) as a PIL image.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

KAGGLE_IMAGE_DIR = "faces-spring-2020/faces-spring-2020"
# ids in glasses/data/excluded-kaggle-ids.txt that the default fixture includes (first few of the list)
EXCLUDED_SAMPLE = (30, 31, 45, 58, 71)


def face_image(seed: int, glasses: bool, size: int = 96, mode: str = "RGB") -> Image.Image:
    """A deterministic synthetic face: skin-tone ellipse on a noisy background, dark bar if glasses."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(img)
    tone = tuple(int(v) for v in rng.integers(120, 230, size=3))
    d.ellipse([size * 0.2, size * 0.1, size * 0.8, size * 0.95], fill=tone)
    if glasses:
        y = int(size * 0.4)
        d.rectangle([size * 0.25, y, size * 0.45, y + size * 0.1], fill=(10, 10, 10))
        d.rectangle([size * 0.55, y, size * 0.75, y + size * 0.1], fill=(10, 10, 10))
        d.line([size * 0.45, y + 4, size * 0.55, y + 4], fill=(10, 10, 10), width=2)
    return img.convert(mode) if mode != "RGB" else img


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def kaggle_csv_text(rows: list[tuple[int, int | None]], seed: int = 0) -> str:
    """A Kaggle CSV: `id,v1..v512,glasses` (label None for every row -> test.csv without glasses column)."""
    rng = np.random.default_rng(seed)
    labelled = rows and rows[0][1] is not None
    header = ["id"] + [f"v{i}" for i in range(1, 513)] + (["glasses"] if labelled else [])
    lines = [",".join(header)]
    for rid, label in rows:
        feats = ",".join(f"{v:.6f}" for v in rng.normal(size=512))
        lines.append(f"{rid},{feats}" + (f",{label}" if labelled else ""))
    return "\n".join(lines) + "\n"


def kaggle_default_rows(n_train: int = 24, n_test: int = 4) -> tuple[list[tuple[int, int]], list[int]]:
    """(train rows (id, label), test ids): ids 1..n_train plus EXCLUDED_SAMPLE, test ids after them."""
    ids = sorted(set(range(1, n_train + 1)) | set(EXCLUDED_SAMPLE))
    train = [(i, 1 if i % 3 == 0 else 0) for i in ids]  # 1/3 glasses
    first_test = max(ids) + 1
    return train, list(range(first_test, first_test + n_test))


def make_kaggle_dir(root: Path, *, n_train: int = 24, n_test: int = 4, image_size: int = 64,
                    missing_image_ids: tuple[int, ...] = (), extra_image_ids: tuple[int, ...] = (),
                    corrupt_ids: tuple[int, ...] = (), mislabelled_ids: tuple[int, ...] = ()) -> Path:
    """Write a Kaggle-layout directory; returns root.

    missing_image_ids: labelled ids whose PNG is not written; extra_image_ids: PNGs with no CSV row;
    corrupt_ids: PNGs written truncated; mislabelled_ids: PNGs drawn as the other class than their CSV
    label (label errors to find). Real Kaggle images are 1024x1024: pass image_size=1024 to mimic.
    """
    root = Path(root)
    img_dir = root / KAGGLE_IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    train, test = kaggle_default_rows(n_train, n_test)
    (root / "train.csv").write_text(kaggle_csv_text(train, seed=1))
    (root / "test.csv").write_text(kaggle_csv_text([(i, None) for i in test], seed=2))
    labels = dict(train)
    for rid in [r for r, _ in train] + test + list(extra_image_ids):
        if rid in missing_image_ids:
            continue
        drawn = bool(labels.get(rid, 0)) != (rid in mislabelled_ids)
        data = _encode(face_image(rid, drawn, image_size), "PNG")
        if rid in corrupt_ids:
            data = data[: len(data) // 2]
        (img_dir / f"face-{rid}.png").write_bytes(data)
    return root


def make_kaggle_zip(zip_path: Path, **kwargs) -> Path:
    """The same fixture as make_kaggle_dir, packed like Kaggle's download (zip of the directory's contents)."""
    zip_path = Path(zip_path)
    src = zip_path.with_suffix("")
    src = src.parent / (src.name + "-src")
    make_kaggle_dir(src, **kwargs)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    return zip_path


FOLDER_FORMATS = (("PNG", ".png", "RGB"), ("JPEG", ".jpg", "RGB"), ("PNG", ".png", "RGBA"),
                  ("PNG", ".png", "L"), ("WEBP", ".webp", "RGB"), ("BMP", ".bmp", "RGB"),
                  ("GIF", ".gif", "P"), ("TIFF", ".tif", "CMYK"))


def make_folders(root: Path, *, n_glasses: int = 12, n_no_glasses: int = 28, persons: int | None = 10,
                 no_glasses_dir: str = "no_glasses", group_column: str = "celeba_identity",
                 image_size: int = 80) -> Path:
    """Write a folders: source with mixed formats/modes; labels.csv with a group column when persons is set.

    Person p owns files with index % persons == p in both classes (a person can appear with and without
    glasses, as in CelebA).
    """
    root = Path(root)
    rows = []
    k = 0
    for cls, n, dirname in (("glasses", n_glasses, "glasses"), ("no_glasses", n_no_glasses, no_glasses_dir)):
        d = root / dirname
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            fmt, ext, mode = FOLDER_FORMATS[k % len(FOLDER_FORMATS)]
            k += 1
            name = f"{cls}-{i:04d}{ext}"
            face_image(1000 * (cls == "glasses") + i, cls == "glasses", image_size, mode).save(d / name, format=fmt)
            if persons:
                rows.append((f"{dirname}/{name}", 1 if cls == "glasses" else 0, 100 + i % persons))
    if persons:
        lines = [f"file,eyeglasses,{group_column}"] + [f"{f},{g},{p}" for f, g, p in rows]
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def flip_folder_labels(root: Path, files: list[str]) -> list[str]:
    """Plant label errors in a folders: source: move each `files` entry (e.g. "glasses/glasses-0003.png")
    to the other class folder and rewrite labels.csv to match; returns the new relative paths."""
    root = Path(root)
    moved = {}
    for rel in files:
        cls, name = rel.split("/", 1)
        other = "no_glasses" if cls == "glasses" else "glasses"
        (root / other).mkdir(exist_ok=True)
        (root / rel).rename(root / other / name)
        moved[rel] = f"{other}/{name}"
    labels = root / "labels.csv"
    if labels.exists():
        lines = labels.read_text().splitlines()
        out = [lines[0]]
        for line in lines[1:]:
            file, _, rest = line.split(",", 2)
            new = moved.get(file, file)
            out.append(f"{new},{1 if new.startswith('glasses/') else 0},{rest}")
        labels.write_text("\n".join(out) + "\n")
    return [moved[rel] for rel in files]


def write_corrupt_files(directory: Path) -> list[str]:
    """Write unreadable files into directory; returns their names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png = _encode(face_image(7, False, 64), "PNG")
    jpg = _encode(face_image(8, False, 64), "JPEG")
    files = {
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg[: len(jpg) // 3],
        "notes-not-an-image.png": b"this is text, not a PNG\n" * 10,
        "empty.jpg": b"",
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return sorted(files)
