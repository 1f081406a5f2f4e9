"""Robustness: the test split as users really send it -> ROC-AUC and recall per condition.

    test-split photos (the original files, at their own resolution)
      -> one altered copy per photo and condition (seeded: the same photo always gets the same
         alteration), e.g. a tight face-box crop, the face small in a larger frame, JPEG quality 20-30
      -> the preprocessing contract (glasses.preprocessing.to_uint8) -> the model -> calibrated P(glasses)
      -> per condition: ROC-AUC, recall of glasses at the served threshold, specificity, balanced
         accuracy, with the number of photos and people behind each figure; the untouched photos
         also per source
      -> robustness.json and robustness.md (a table) in the run directory

The framings assume photos framed like CelebA's (aligned faces or ~200 px face crops: the face
centred, eyes a little above the middle): `tight_crop` keeps the face box only (brows to chin);
`loose_crop`, `off_centre` and `small_face` put the whole photo into a larger frame filled with a
smooth random background (the photos hold little background of their own).
"""

from __future__ import annotations

import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from glasses.config import CLASS_NAMES, IMAGE_SIZE, SEED
from glasses.preprocessing import decode, framed_or_whole

REPORT_JSON = "robustness.json"
REPORT_MD = "robustness.md"
# condition -> what it does (also the table's legend)
CONDITIONS: dict[str, str] = {
    "untouched": "the photo as it is",
    "tight_crop": "face box only: square of 0.62 x the short side, centred 56 % down",
    "loose_crop": "photo at 1/1.6 of a larger frame, centred, background around it",
    "off_centre": "photo at 1/1.6 of a larger frame, pushed towards a corner",
    "small_face": "photo at 1/2.5 of a larger frame, anywhere in it",
    "rotation": "rotated by +20 or -20 degrees",
    "grayscale": "black and white",
    "low_resolution": "down to 48-96 px (short side), upscaled back",
    "jpeg": "JPEG quality 20-30",
    "blur": "Gaussian blur, radius 1.5-2.5 px",
    "dark": "exposure x 0.35 (-1.5 EV)",
    "bright": "exposure x 1.8 (+0.85 EV, highlights clip)",
}
TIGHT_SIDE, TIGHT_CENTRE_Y = 0.62, 0.56


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random colour field with fine noise (a stand-in for a scene behind the person)."""
    coarse = Image.fromarray(rng.integers(15, 240, size=(4, 4, 3), dtype=np.uint8), "RGB")
    field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    noise = rng.normal(0.0, 8.0, size=field.shape)
    return Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8), "RGB")


def _in_frame(img: Image.Image, scale: float, rng: np.random.Generator, where: str) -> Image.Image:
    """The photo pasted into a frame `scale` times its size: centred, near a corner, or anywhere."""
    w, h = img.size
    fw, fh = round(w * scale), round(h * scale)
    frame = _background(rng, fw, fh)
    room_x, room_y = fw - w, fh - h
    if where == "centre":
        x, y = room_x // 2, room_y // 2
    elif where == "corner":
        fx, fy = (rng.uniform(0.0, 0.15) if rng.random() < 0.5 else rng.uniform(0.85, 1.0) for _ in range(2))
        x, y = round(room_x * fx), round(room_y * fy)
    else:
        x, y = round(room_x * rng.uniform()), round(room_y * rng.uniform())
    frame.paste(img, (x, y))
    return frame


def _exposure(img: Image.Image, gain: float) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64) * gain
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def altered(img: Image.Image, condition: str, rng: np.random.Generator) -> Image.Image | bytes:
    """One condition applied to an RGB photo: a PIL image, or encoded bytes (JPEG) as uploaded."""
    w, h = img.size
    if condition == "untouched":
        return img
    if condition == "tight_crop":
        side = TIGHT_SIDE * min(w, h)
        cx, cy = w / 2, TIGHT_CENTRE_Y * h
        return img.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
    if condition in ("loose_crop", "off_centre", "small_face"):
        scale, where = {"loose_crop": (1.6, "centre"), "off_centre": (1.6, "corner"),
                        "small_face": (2.5, "anywhere")}[condition]
        return _in_frame(img, scale, rng, where)
    if condition == "rotation":
        mean = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(axis=0))
        return img.rotate(20.0 if rng.random() < 0.5 else -20.0, Image.Resampling.BICUBIC, fillcolor=mean)
    if condition == "grayscale":
        return img.convert("L")
    if condition == "low_resolution":
        short = int(rng.integers(48, 97))
        small = img.resize((max(1, round(w * short / min(w, h))), max(1, round(h * short / min(w, h)))),
                           Image.Resampling.LANCZOS)
        return small.resize((w, h), Image.Resampling.BICUBIC)
    if condition == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(20, 31)))
        return buf.getvalue()
    if condition == "blur":
        return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 2.5))))
    if condition == "dark":
        return _exposure(img, 0.35)
    if condition == "bright":
        return _exposure(img, 1.8)
    raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")


def photo_variants(data: bytes, index: int, *, size: int = IMAGE_SIZE, seed: int = SEED,
                   conditions: tuple[str, ...] = tuple(CONDITIONS)) -> np.ndarray:
    """uint8 (len(conditions), size, size, 3): every condition of one photo through the contract.
    Deterministic: photo `index` gets the same alterations for the same seed."""
    return framed_variants(data, index, size=size, seed=seed, conditions=conditions)[0]


def framed_variants(data: bytes, index: int, *, size: int = IMAGE_SIZE, seed: int = SEED,
                    conditions: tuple[str, ...] = tuple(CONDITIONS), framing: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (len(conditions), size, size, 3), no_face bool (len(conditions),)): every condition of one
    photo through the contract with `framing`. Where framing "face" finds no face (the service's 422),
    the unframed photo is scored and no_face says so. Deterministic: same alterations for the same seed."""
    img = decode(data).convert("RGB")
    out = np.empty((len(conditions), size, size, 3), np.uint8)
    no_face = np.zeros(len(conditions), bool)
    for k, condition in enumerate(conditions):
        rng = np.random.default_rng([seed, index, k])
        out[k], no_face[k] = framed_or_whole(altered(img, condition, rng), size, framing)
    return out, no_face


def split_photo_bytes(manifest: dict, split: str = "test") -> list[bytes]:
    """The original file bytes of one split (single-source or union manifest; directory or zip sources)."""
    entry = manifest["splits"][split]
    roots = [s["root"] for s in manifest["sources"]] if "sources" in manifest else [manifest["root"]]
    which = entry.get("source_index") or [0] * len(entry["files"])
    zips = {r: zipfile.ZipFile(r) for r in set(roots) if Path(r).is_file()}
    try:
        return [zips[roots[s]].read(f) if roots[s] in zips else (Path(roots[s]) / f).read_bytes()
                for s, f in zip(which, entry["files"])]
    finally:
        for zf in zips.values():
            zf.close()


def condition_metrics(y: np.ndarray, p: np.ndarray, people: np.ndarray, threshold: float) -> dict:
    """ROC-AUC, recall / specificity / balanced accuracy at `threshold`, and the counts behind them."""
    from training.evaluate import binary_metrics

    m = binary_metrics(y, p, threshold)
    return {
        "photos": int(len(y)), "glasses_photos": int(y.sum()),
        "people": int(len(set(people))), "glasses_people": int(len(set(people[y == 1]))),
        "roc_auc": m["roc_auc"], "recall": m["recall"], "specificity": m["specificity"],
        "balanced_accuracy": m["balanced_accuracy"], "mean_p_glasses": float(p.mean()) if len(p) else None,
    }


def score_conditions(predict: Callable[[np.ndarray], np.ndarray], photos: list[bytes], *, size: int,
                     seed: int, chunk: int = 64, framing: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(P(glasses), no_face), each (n_conditions, n_photos): photos altered and framed in threads (PIL
    releases the GIL), chunk by chunk, the next chunk prepared while the model scores this one."""
    conditions = tuple(CONDITIONS)
    out = np.empty((len(conditions), len(photos)), np.float64)
    no_face = np.zeros((len(conditions), len(photos)), bool)
    starts = list(range(0, len(photos), chunk))
    with ThreadPoolExecutor(max_workers=2) as pool:
        def submit(k: int) -> list:
            if k >= len(starts):
                return []
            return [pool.submit(framed_variants, photos[i], i, size=size, seed=seed, framing=framing)
                    for i in range(starts[k], min(starts[k] + chunk, len(photos)))]

        pending = submit(0)
        for k, start in enumerate(starts):
            batch = [f.result() for f in pending]
            pending = submit(k + 1)
            pixels = np.stack([b[0] for b in batch], axis=1)  # (conditions, photos, S, S, 3)
            flat = predict(pixels.reshape((-1,) + pixels.shape[2:]))
            out[:, start:start + len(batch)] = np.asarray(flat, np.float64).reshape(len(conditions), len(batch))
            no_face[:, start:start + len(batch)] = np.stack([b[1] for b in batch], axis=1)
    return out, no_face


def robustness(predict: Callable[[np.ndarray], np.ndarray], manifest_path: str | Path, threshold: float, *,
               split: str = "test", seed: int = SEED, out_dir: str | Path | None = None,
               framing: str = "none") -> dict:
    """Score every condition of a split; with out_dir, write robustness.json and robustness.md there.

    `predict` maps uint8 pixels (N, S, S, 3) to P(glasses) (N,) as served (calibrated); `framing` is
    the version's (photos where "face" finds none are scored unframed and counted as `no_face`)."""
    from training.data import read_manifest

    manifest = read_manifest(manifest_path)
    entry = manifest["splits"][split]
    y = np.asarray(entry["labels"], np.int64)
    people = np.asarray(entry["groups"] if entry.get("groups") else entry["files"], dtype=object).astype(str)
    names = [s["source"] for s in manifest["sources"]] if "sources" in manifest else [manifest["source"]]
    which = np.asarray(entry.get("source_index") or [0] * len(y))
    probs, no_face = score_conditions(predict, split_photo_bytes(manifest, split), size=int(manifest["size"]),
                                      seed=seed, framing=framing)
    report = {"split": split, "seed": seed, "threshold": float(threshold), "positive_class": CLASS_NAMES[1],
              "framing": framing, "manifest_path": str(Path(manifest_path).resolve()), "legend": CONDITIONS,
              "conditions": {}}
    for k, condition in enumerate(CONDITIONS):
        row = {"all": condition_metrics(y, probs[k], people, threshold) | {"no_face": int(no_face[k].sum())},
               "by_source": {}}
        for s, name in enumerate(names):
            sel = which == s
            if len(names) > 1 and sel.any():
                row["by_source"][name] = condition_metrics(y[sel], probs[k][sel], people[sel], threshold)
        report["conditions"][condition] = row
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2))
        (out_dir / REPORT_MD).write_text(markdown_table(report) + "\n")
        report["report_path"] = str(out_dir / REPORT_JSON)
    return report


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def markdown_table(report: dict) -> str:
    """The report as a markdown table: one row per condition, overall and per source."""
    first = next(iter(report["conditions"].values()))
    sources = list(first["by_source"])
    short = [Path(s.split(":", 1)[-1]).name for s in sources]
    head = ["condition", "photos (glasses)", "people (with glasses)", "ROC-AUC",
            f"recall @ {report['threshold']:.3f}", "specificity", "balanced acc."]
    head += [f"{s}: AUC / recall" for s in short]
    framed = report.get("framing", "none") != "none"
    head += ["no face found"] if framed else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for condition, row in report["conditions"].items():
        m = row["all"]
        cells = [condition, f"{m['photos']} ({m['glasses_photos']})", f"{m['people']} ({m['glasses_people']})",
                 _f(m["roc_auc"]), _f(m["recall"]), _f(m["specificity"]), _f(m["balanced_accuracy"])]
        cells += [f"{_f(row['by_source'][s]['roc_auc'])} / {_f(row['by_source'][s]['recall'])}" for s in sources]
        cells += [str(m.get("no_face", 0))] if framed else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
