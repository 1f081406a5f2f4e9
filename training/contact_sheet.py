"""Contact sheet: the top suspects of a label review as one PNG and a small static HTML page.

Each photo is shown from its original file (not the 128 px cache) with its rank, the given label and
the out-of-fold P(glasses), so a person can confirm or reject each suspect by eye.
"""

from __future__ import annotations

import html
import io
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

THUMB = 160  # px, longest side of a photo on the sheet
CAPTION = 30  # px under each photo
COLUMNS = 10
LABEL_COLOURS = {"glasses": (200, 30, 30), "no_glasses": (30, 90, 200)}


def read_photo(root: str, file: str) -> Image.Image:
    """The original photo `file` of a source root (a directory or a Kaggle zip), as RGB."""
    if Path(root).is_file():
        with zipfile.ZipFile(root) as zf:
            data = zf.read(file)
    else:
        data = (Path(root) / file).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def _thumb(row: dict) -> Image.Image:
    try:
        img = read_photo(row["root"], row["file"])
    except Exception:  # an unreadable original still gets its tile (the review used the cache)
        img = Image.new("RGB", (THUMB, THUMB), (128, 128, 128))
    img.thumbnail((THUMB, THUMB))
    return img


def caption(row: dict) -> str:
    """'#3 given glasses P=0.02' for one suspect."""
    return f"#{row['rank']} given {row['given_label']} P={float(row['p_glasses']):.2f}"


def write_sheet(rows: list[dict], path: Path, *, columns: int = COLUMNS) -> Path:
    """One PNG grid of the photos in `rows` (already in rank order), each captioned and framed in its
    given label's colour (red = labelled glasses, blue = labelled no_glasses)."""
    columns = max(1, min(columns, len(rows)))
    n_rows = max(1, -(-len(rows) // columns))
    cell_w, cell_h = THUMB + 8, THUMB + CAPTION + 8
    sheet = Image.new("RGB", (columns * cell_w, n_rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h
        thumb = _thumb(row)
        colour = LABEL_COLOURS.get(row["given_label"], (0, 0, 0))
        draw.rectangle([x0 + 1, y0 + 1, x0 + cell_w - 2, y0 + THUMB + 6], outline=colour, width=3)
        sheet.paste(thumb, (x0 + 4 + (THUMB - thumb.width) // 2, y0 + 4 + (THUMB - thumb.height) // 2))
        text = caption(row)
        draw.text((x0 + 4, y0 + THUMB + 9), text[:26], fill=(0, 0, 0))
        draw.text((x0 + 4, y0 + THUMB + 20), Path(row["file"]).name[:26], fill=(90, 90, 90))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def write_page(rows: list[dict], out_dir: Path, *, title: str, sheet_name: str) -> Path:
    """OUT/index.html: a table of the suspects with thumbnails written to OUT/suspects/ (static files)."""
    thumbs = out_dir / "suspects"
    thumbs.mkdir(parents=True, exist_ok=True)
    cells = []
    for row in rows:
        name = f"{int(row['rank']):05d}.jpg"
        _thumb(row).save(thumbs / name, quality=90)
        cells.append(
            f"<tr><td>{int(row['rank'])}</td><td><img src=\"suspects/{name}\" alt=\"{html.escape(row['file'])}\"></td>"
            f"<td class=\"{html.escape(row['given_label'])}\">{html.escape(row['given_label'])}</td>"
            f"<td>{float(row['p_glasses']):.3f}</td><td>{'yes' if row.get('issue') in ('1', 1, True) else ''}</td>"
            f"<td><code>{html.escape(row['id'])}</code><br><small>{html.escape(row['source'])}</small></td></tr>")
    page = out_dir / "index.html"
    page.write_text(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}"
        ".glasses{color:#c81e1e}.no_glasses{color:#1e5ac8}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>Rank 1 = most suspect label (cleanlab label quality score of the "
        "out-of-fold P(glasses)). Whole sheet: "
        f"<a href=\"{html.escape(sheet_name)}\">{html.escape(sheet_name)}</a>. "
        "Full list: <a href=\"review.csv\">review.csv</a>.</p>\n"
        "<table><tr><th>rank</th><th>photo</th><th>given label</th><th>P(glasses)</th>"
        "<th>cleanlab issue</th><th>id</th></tr>\n" + "\n".join(cells) + "\n</table></body></html>\n")
    return page
