"""Download: the Kaggle dataset (jeffheaton/glasses-or-no-glasses) as its zip, with the `kaggle` package.

Credentials, in the order the `kaggle` package itself looks for them:
KAGGLE_API_TOKEN (a token or a file holding one), ~/.kaggle/access_token, KAGGLE_USERNAME + KAGGLE_KEY,
kaggle.json in $KAGGLE_CONFIG_DIR, ~/.kaggle/ or ~/.config/kaggle/. We check that some credential
exists and that Kaggle answers (bounded by a timeout) before importing `kaggle`, which authenticates
(and may call the network) at import time. Every failure is one line (training.cli.UserError).
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
from pathlib import Path

from glasses.config import KAGGLE_DATASET, KAGGLE_HOST, KAGGLE_TIMEOUT, WORK_DIR
from training.cli import UserError

DEFAULT_DEST = WORK_DIR / "kaggle"


def credential_source() -> str | None:
    """Where Kaggle credentials would come from, or None when there are none."""
    home = Path(os.path.expanduser("~"))
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt"):
        if (home / ".kaggle" / name).is_file():
            return f"~/.kaggle/{name}"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    dirs = [os.environ.get("KAGGLE_CONFIG_DIR"), home / ".kaggle",
            Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    for d in dirs:
        if d and (Path(d) / "kaggle.json").is_file():
            return str(Path(d) / "kaggle.json")
    return None


def check_reachable(host: str = KAGGLE_HOST, port: int = 443, timeout: float = KAGGLE_TIMEOUT) -> None:
    """Raise UserError unless a TCP connection to host:port succeeds within `timeout` seconds (DNS included)."""
    outcome: dict = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=attempt, daemon=True)  # getaddrinfo has no timeout of its own
    worker.start()
    worker.join(timeout)
    if outcome.get("ok"):
        return
    reason = outcome.get("error") or f"no answer within {timeout:g} s"
    raise UserError(f"cannot reach Kaggle at {host}:{port} ({reason}); check the network or use "
                    f"--source kaggle-dir:PATH with a downloaded copy")


def download(dest: Path = DEFAULT_DEST, *, dataset: str = KAGGLE_DATASET, host: str = KAGGLE_HOST,
             timeout: float = KAGGLE_TIMEOUT, force: bool = False) -> Path:
    """Download `dataset`'s zip into dest (skipped if already there); returns the zip's path."""
    dest = Path(dest).expanduser().resolve()
    zip_path = dest / f"{dataset.split('/')[-1]}.zip"
    if zip_path.exists() and not force:
        return zip_path
    source = credential_source()
    if source is None:
        raise UserError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), "
                        "or put kaggle.json in ~/.kaggle/")
    check_reachable(host, timeout=timeout)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi  # lazily: `import kaggle` authenticates

        api = KaggleApi()
        api.authenticate()
        api.dataset_download_files(dataset, path=str(dest), quiet=False, unzip=False, force=force)
    except SystemExit:  # the kaggle package exits when authentication fails
        raise UserError(f"Kaggle rejected the credentials from {source}") from None
    except Exception as exc:  # HTTP 401/403/404, connection resets...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"Kaggle download of {dataset} failed: {first[:300]}") from None
    if not zip_path.exists():
        raise UserError(f"Kaggle download finished but {zip_path} is missing")
    return zip_path


def _run(args: argparse.Namespace) -> int:
    path = download(Path(args.dest), force=args.force, timeout=args.timeout)
    print(f"downloaded: {path}")
    print(f"next: glasses-train prepare --source kaggle-dir:{path}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `glasses-train download`."""
    p = subparsers.add_parser("download", help=f"download the Kaggle dataset {KAGGLE_DATASET} (needs credentials)")
    p.add_argument("--dest", default=str(DEFAULT_DEST), help="directory for the zip (default %(default)s)")
    p.add_argument("--force", action="store_true", help="download again even if the zip is there")
    p.add_argument("--timeout", type=float, default=KAGGLE_TIMEOUT, help="seconds to wait for Kaggle (default %(default)s)")
    p.set_defaults(func=_run)
