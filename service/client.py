"""Command-line client: one verdict per image file from a running service.

    python -m service.client face.jpg [more.png ... FOLDER ...] [--url http://127.0.0.1:3000] [--json]

A FOLDER stands for the image files directly inside it (by extension, sorted by name).

Files go to POST /predict_batch in chunks of at most MAX_BATCH_IMAGES files and BATCH_BYTES bytes
(under the service's body limit); a chunk of one file goes to POST /predict, so a file too large for
any request gets its own 413 and the others still get verdicts.
Prints `FILE: glasses (P(glasses)=0.93, threshold 0.50)` per file, or the server's JSON with --json.
Exit code 0 when every file got a verdict, 1 when some were refused (each says why), 2 when the
command itself cannot run (missing file, service unreachable): one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from glasses.config import MAX_BATCH_IMAGES, MAX_REQUEST_BYTES

DEFAULT_URL = "http://127.0.0.1:3000"
BATCH_BYTES = MAX_REQUEST_BYTES - 256 * 1024  # room for the multipart headers of up to 32 parts


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ClientError(Exception):
    """The command cannot run; printed as one line."""


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, folders replaced by the image files directly inside them (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ClientError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ClientError(f"no such file or folder: {path}")
    return files


def _post(client: httpx.Client, url: str, files: list[tuple[str, tuple[str, bytes]]]) -> httpx.Response:
    try:
        return client.post(url, files=files)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the service at {url}: {exc}") from None


def chunk_files(sizes: list[int], max_files: int = MAX_BATCH_IMAGES, max_bytes: int = BATCH_BYTES) -> list[range]:
    """Consecutive index ranges of at most `max_files` files and `max_bytes` bytes (a larger file alone)."""
    chunks, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start == max_files or total + size > max_bytes):
            chunks.append(range(start, i))
            start, total = i, 0
        total += size
    if sizes:
        chunks.append(range(start, len(sizes)))
    return chunks


def predict_files(paths: list[Path], url: str = DEFAULT_URL, timeout: float = 60.0) -> list[dict[str, Any]]:
    """One result per path, in order: a verdict dict, or {"error": ..., "status": ...} for that file."""
    for path in paths:
        if not path.is_file():
            raise ClientError(f"no such file: {path}")
    results: list[dict[str, Any]] = []
    with httpx.Client(timeout=timeout) as client:
        for chunk in chunk_files([p.stat().st_size for p in paths]):
            if len(chunk) == 1:
                path = paths[chunk[0]]
                resp = _post(client, f"{url}/predict", [("image", (path.name, path.read_bytes()))])
                result = _json(resp)
                if resp.status_code != 200 and "status" not in result:
                    result["status"] = resp.status_code
                results.append(result)
                continue
            resp = _post(client, f"{url}/predict_batch", [("images", (paths[i].name, paths[i].read_bytes()))
                                                          for i in chunk])
            body = _json(resp)
            if resp.status_code != 200 or not isinstance(body, list):
                raise ClientError(f"service refused the batch ({resp.status_code}): {body.get('error', body)}")
            results.extend(body)
    return results


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return {"error": resp.text.strip()[:200] or resp.reason_phrase, "status": resp.status_code}


def format_result(path: Path, result: dict[str, Any]) -> str:
    """One human-readable line for one file."""
    if "verdict" in result:
        return (f"{path}: {result['verdict']} (P(glasses)={result['probability']:.2f}, "
                f"threshold {result['threshold']:.2f})")
    return f"{path}: error {result.get('status', '?')}: {result.get('error', result)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path,
                        help="image files (JPEG, PNG, WebP, BMP, GIF, TIFF) or folders of them")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service base URL (default {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print the service's JSON answers")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    args = parser.parse_args(argv)
    try:
        files = expand_paths(args.files)
        results = predict_files(files, args.url.rstrip("/"), args.timeout)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"file": str(p), **r} for p, r in zip(files, results)], indent=2))
    else:
        for path, result in zip(files, results):
            print(format_result(path, result))
    return 0 if all("verdict" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
