"""`glasses-train registry list|show|promote|export|import`: manage the model versions in the store.

    list [--json]       every version, newest first, with key test metrics; * = promoted (served by default)
    show TAG [--report] labels and metadata of one version; its HTML evaluation report
    promote TAG         serve this version by default (rollback = promote an older one)
    export TAG FILE     write a version to a .bentomodel archive (never over an existing file; --overwrite)
    import FILE         add a .bentomodel archive to the store (not promoted; one already there is kept)

The store is $BENTOML_HOME (default ~/bentoml); BentoML's own `bentoml models list/get/export/import`
work on the same store. All store access is glasses/registry.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from glasses.config import MODEL_NAME

LIST_COLUMNS = ("tag", "created", "profile", "accuracy", "balanced_accuracy", "roc_auc", "threshold", "manifest")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _list(args: argparse.Namespace) -> None:
    from glasses import registry

    rows = registry.list_versions()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no {MODEL_NAME} versions in {registry.bentoml_home()}")
        return
    header = ["  tag", *LIST_COLUMNS[1:]]
    table = [[("* " if r["promoted"] else "  ") + r["tag"]] + [_fmt(r[c]) for c in LIST_COLUMNS[1:]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *table)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)))
    print("(* = promoted: served by default)")


def _show(args: argparse.Namespace) -> None:
    from glasses import registry

    if args.report:
        from training.report import version_report

        print(f"report: {version_report(args.tag, args.out)}")
        return
    print(json.dumps(registry.describe(args.tag), indent=2, default=str))


def _promote(args: argparse.Namespace) -> None:
    from glasses import registry

    print(f"promoted {registry.promote(args.tag)}")


def _export(args: argparse.Namespace) -> None:
    from glasses import registry

    path = registry.export_version(args.tag, args.file, overwrite=args.overwrite)
    print(f"exported {registry.get_model(args.tag).tag} -> {path}")


def _import(args: argparse.Namespace) -> None:
    from glasses import registry

    tag, added = registry.import_version(args.file)
    print(f"imported {tag} (not promoted; `glasses-train registry promote {tag}`)" if added
          else f"{tag} is already in the store: nothing imported")


ACTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "list": _list, "show": _show, "promote": _promote, "export": _export, "import": _import,
}


def _cli(args: argparse.Namespace) -> int:
    ACTIONS[args.action](args)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `glasses-train registry` and its actions."""
    r = subparsers.add_parser("registry", help="list / show / promote / export / import model versions",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = r.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="versions with key metrics; * = promoted")
    ls.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="labels and metadata of one version; --report writes its HTML report")
    show.add_argument("tag")
    show.add_argument("--report", action="store_true",
                      help="write the version's evaluation report (HTML) and print its path")
    show.add_argument("--out", type=Path, help="where to write the report (default artifacts/reports/NAME-VERSION.html)")
    sub.add_parser("promote", help="serve this version by default (rollback = promote an older one)").add_argument("tag")
    ex = sub.add_parser("export", help="write a version to a .bentomodel file")
    ex.add_argument("tag")
    ex.add_argument("file", type=Path)
    ex.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    sub.add_parser("import", help="import a .bentomodel file").add_argument("file", type=Path)
    r.set_defaults(func=_cli)
