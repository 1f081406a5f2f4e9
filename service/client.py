"""Command-line client: one verdict per image file from a running service.

    python -m service.client face.jpg [more.png ...] [--url http://127.0.0.1:3000] [--json]

One file goes to POST /predict, several to POST /predict_batch (in chunks of MAX_BATCH_IMAGES).
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

from glasses.config import MAX_BATCH_IMAGES

DEFAULT_URL = "http://127.0.0.1:3000"


class ClientError(Exception):
    """The command cannot run; printed as one line."""


def _post(client: httpx.Client, url: str, files: list[tuple[str, tuple[str, bytes]]]) -> httpx.Response:
    try:
        return client.post(url, files=files)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the service at {url}: {exc}") from None


def predict_files(paths: list[Path], url: str = DEFAULT_URL, timeout: float = 60.0) -> list[dict[str, Any]]:
    """One result per path, in order: a verdict dict, or {"error": ..., "status": ...} for that file."""
    for path in paths:
        if not path.is_file():
            raise ClientError(f"no such file: {path}")
    results: list[dict[str, Any]] = []
    with httpx.Client(timeout=timeout) as client:
        if len(paths) == 1:
            resp = _post(client, f"{url}/predict", [("image", (paths[0].name, paths[0].read_bytes()))])
            results.append(_json(resp))
            if resp.status_code != 200 and "status" not in results[-1]:
                results[-1]["status"] = resp.status_code
            return results
        for start in range(0, len(paths), MAX_BATCH_IMAGES):
            chunk = paths[start : start + MAX_BATCH_IMAGES]
            resp = _post(client, f"{url}/predict_batch", [("images", (p.name, p.read_bytes())) for p in chunk])
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
    parser.add_argument("files", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service base URL (default {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print the service's JSON answers")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    args = parser.parse_args(argv)
    try:
        results = predict_files(args.files, args.url.rstrip("/"), args.timeout)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"file": str(p), **r} for p, r in zip(args.files, results)], indent=2))
    else:
        for path, result in zip(args.files, results):
            print(format_result(path, result))
    return 0 if all("verdict" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
