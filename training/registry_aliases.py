"""`glasses-train registry alias|rollback|history|shadow-report`: which version is served, and why.

    registry alias set candidate TAG --shadow --note "retrained on May photos"   # scores beside production
    registry alias set candidate TAG --traffic 0.1                              # answers 10 % of requests
    registry alias unset candidate | registry alias list
    registry promote TAG --note "..."    # production = TAG: every worker serves it within seconds
    registry rollback --note "..."       # production back to its previous target (repeat: further back)
    registry history                     # every move: when, alias, from -> to, by user@host, note
    registry shadow-report --url URL     # agreement of the candidate with production on live traffic

The moves themselves are glasses.registry's (locked, atomic, appended to the audit history); the
service follows them (service/live.py).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from glasses import registry
from glasses.config import CANDIDATE_ALIAS
from glasses.files import UserError


def _move_line(entry: dict) -> str:
    """One history entry as a line."""
    share = f" traffic={entry['traffic']:g}" if entry.get("traffic") else ""
    shadow = " shadow" if entry.get("shadow") else ""
    note = f"  # {entry['note']}" if entry.get("note") else ""
    return (f"{entry['at']}  {entry['action']:<11} {entry['alias']:<12} {entry.get('from') or '-'} -> "
            f"{entry.get('to') or '-'}{share}{shadow}  by {entry.get('by', '?')}{note}")


def _alias_cli(args) -> int:
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
    return 0


def _rollback_cli(args) -> int:
    print(_move_line(registry.rollback(note=args.note)))
    return 0


def _history_cli(args) -> int:
    entries = registry.read_history()[-args.last:] if args.last else registry.read_history()
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        print("\n".join(_move_line(e) for e in entries) if entries else "no alias moves recorded yet")
    return 0


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


def _shadow_report_cli(args) -> int:
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
    return 0


def add_cli(sub) -> None:
    """Add alias / rollback / history / shadow-report to the `registry` subparsers."""
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
    alias.set_defaults(func=_alias_cli)

    r = sub.add_parser("rollback", help="production back to its previous target")
    r.add_argument("--note")
    r.set_defaults(func=_rollback_cli)
    h = sub.add_parser("history", help="every alias move: when, from, to, by whom, why")
    h.add_argument("--last", type=int, default=0, help="only the last N moves")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=_history_cli)
    sr = sub.add_parser("shadow-report", help="candidate vs production agreement on live traffic")
    sr.add_argument("--url", default="http://127.0.0.1:3000")
    sr.add_argument("--json", action="store_true")
    sr.set_defaults(func=_shadow_report_cli)
