"""`glasses-train registry ...`: manage the model versions in the store and which one is served.

    list [--json]       every version, newest first: key test metrics, test-set size and source, aliases
    show TAG [--report] labels and metadata of one version; its HTML evaluation report
    promote TAG [--note]   production = TAG: every running worker serves it within seconds
    rollback [--note]      production back to its previous target (repeat: further back)
    alias set NAME TAG [--traffic 0.1 | --shadow] [--note]   candidate: a canary share or a shadow
    alias unset NAME | alias list
    history [--last N]  every alias move: when, alias, from -> to, by user@host, note
    shadow-report [--url URL]   candidate vs production agreement on live traffic (all workers)
    export TAG FILE     write a version to a .bentomodel archive (never over an existing file; --overwrite)
    import FILE         add a .bentomodel archive to the store (not promoted; one already there is kept)

The store is $BENTOML_HOME (default ~/bentoml); BentoML's own `bentoml models list/get/export/import`
work on the same store. All store access is glasses/registry.py (locked, atomic, recorded in the
history); the service follows the aliases (service/live.py).
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from glasses.config import CANDIDATE_ALIAS, MODEL_NAME
from glasses.files import UserError

LIST_COLUMNS = ("tag", "created", "profile", "roc_auc", "balanced_accuracy", "threshold", "test_photos", "source",
                "aliases")


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
    rows = [r | {"aliases": ",".join(r["aliases"]) or None} for r in rows]
    table = [[("* " if r["promoted"] else "  ") + r["tag"]] + [_fmt(r[c]) for c in LIST_COLUMNS[1:]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *table)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)))
    print("(* = production: what every worker serves; test_photos/source = what its metrics were measured on)")


def _show(args: argparse.Namespace) -> None:
    from glasses import registry

    if args.report:
        from training.report import version_report

        print(f"report: {version_report(args.tag, args.out)}")
        return
    print(json.dumps(registry.describe(args.tag), indent=2, default=str))


def _promote(args: argparse.Namespace) -> None:
    from glasses import registry

    print(f"promoted {registry.promote(args.tag, note=args.note)} (running services follow within seconds)")


def _export(args: argparse.Namespace) -> None:
    from glasses import registry

    path = registry.export_version(args.tag, args.file, overwrite=args.overwrite)
    print(f"exported {registry.get_model(args.tag).tag} -> {path}")


def _import(args: argparse.Namespace) -> None:
    from glasses import registry

    tag, added = registry.import_version(args.file)
    print(f"imported {tag} (not promoted; `glasses-train registry promote {tag}`)" if added
          else f"{tag} is already in the store: nothing imported")


def _move_line(entry: dict) -> str:
    """One history entry as a line."""
    share = f" traffic={entry['traffic']:g}" if entry.get("traffic") else ""
    shadow = " shadow" if entry.get("shadow") else ""
    note = f"  # {entry['note']}" if entry.get("note") else ""
    return (f"{entry['at']}  {entry['action']:<11} {entry['alias']:<12} {entry.get('from') or '-'} -> "
            f"{entry.get('to') or '-'}{share}{shadow}  by {entry.get('by', '?')}{note}")


def _alias(args: argparse.Namespace) -> None:
    from glasses import registry

    if args.alias_action == "set":
        entry = registry.set_alias(args.name, args.tag, traffic=args.traffic, shadow=args.shadow, note=args.note)
        print(_move_line(entry))
    elif args.alias_action == "unset":
        print(_move_line(registry.set_alias(args.name, None, note=args.note, action="alias unset")))
    else:
        aliases = registry.read_aliases()
        if args.json:
            print(json.dumps(aliases, indent=2))
        for name, entry in sorted(aliases.items()) if not args.json else ():
            mode = f"traffic {entry['traffic']:g}" if entry["traffic"] else "shadow" if entry["shadow"] else ""
            print(f"{name:<12} {entry['tag']}  {mode}".rstrip())
        if not aliases and not args.json:
            print(f"no aliases in {registry.bentoml_home()}")


def _rollback(args: argparse.Namespace) -> None:
    from glasses import registry

    print(_move_line(registry.rollback(note=args.note)))


def _history(args: argparse.Namespace) -> None:
    from glasses import registry

    entries = registry.read_history()[-args.last:] if args.last else registry.read_history()
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        print("\n".join(_move_line(e) for e in entries) if entries else "no alias moves recorded yet")


def shadow_report(url: str) -> dict[str, dict]:
    """Shadow counts summed over every worker, from the service's /metrics: {"CAND vs PROD": counts}."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot read {url}/metrics: {exc}") from None
    pairs: dict[str, dict] = {}
    for labels, value in re.findall(r"^glasses_shadow_total\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        counts = pairs.setdefault(f"{found['candidate']} vs {found['production']}",
                                  {"agree": 0, "disagree": 0, "skipped": 0, "failed": 0})
        counts[found["outcome"]] = counts.get(found["outcome"], 0) + int(float(value))
    for counts in pairs.values():
        counts["compared"] = counts["agree"] + counts["disagree"]
        counts["agreement"] = counts["agree"] / counts["compared"] if counts["compared"] else None
    return pairs


def _shadow_report(args: argparse.Namespace) -> None:
    report = shadow_report(args.url)
    if args.json:
        print(json.dumps(report, indent=2))
    elif not report:
        print(f"no shadow comparisons at {args.url} yet (start one: `glasses-train registry alias set "
              f"{CANDIDATE_ALIAS} TAG --shadow`)")
    for pair, c in sorted(report.items()) if not args.json else ():
        agreement = "-" if c["agreement"] is None else f"{c['agreement']:.4f}"
        print(f"{pair}: {c['compared']} images compared, agreement {agreement}, flipped verdicts "
              f"{c['disagree']} (skipped under load {c['skipped']}, failed {c['failed']})")


ACTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "list": _list, "show": _show, "promote": _promote, "export": _export, "import": _import, "alias": _alias,
    "rollback": _rollback, "history": _history, "shadow-report": _shadow_report,
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
    pr = sub.add_parser("promote", help="point production at this version (every running worker follows)")
    pr.add_argument("tag")
    pr.add_argument("--note", help="why (recorded in the history)")
    ex = sub.add_parser("export", help="write a version to a .bentomodel file")
    ex.add_argument("tag")
    ex.add_argument("file", type=Path)
    ex.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    sub.add_parser("import", help="import a .bentomodel file").add_argument("file", type=Path)
    alias = sub.add_parser("alias", help="set / unset / list aliases (production, candidate, any name)")
    alias_sub = alias.add_subparsers(dest="alias_action", required=True)
    s = alias_sub.add_parser("set", help="point an alias at a version")
    s.add_argument("name")
    s.add_argument("tag")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--traffic", type=float, default=0.0, help="canary: share of requests it answers (0..1)")
    mode.add_argument("--shadow", action="store_true", help="score every request beside production, answer none")
    s.add_argument("--note", help="why (recorded in the history)")
    u = alias_sub.add_parser("unset", help="remove an alias (not production)")
    u.add_argument("name")
    u.add_argument("--note")
    alias_sub.add_parser("list", help="every alias and its target").add_argument("--json", action="store_true")

    sub.add_parser("rollback", help="production back to its previous target").add_argument("--note")
    h = sub.add_parser("history", help="every alias move: when, from, to, by whom, why")
    h.add_argument("--last", type=int, default=0, help="only the last N moves")
    h.add_argument("--json", action="store_true")
    sr = sub.add_parser("shadow-report", help="candidate vs production agreement on live traffic")
    sr.add_argument("--url", default="http://127.0.0.1:3000")
    sr.add_argument("--json", action="store_true")
    r.set_defaults(func=_cli)
