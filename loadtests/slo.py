"""SLO check over locust's CSV statistics (`<prefix>_stats.csv`, written by `locust --csv <prefix>`).

    python -m loadtests.slo reports/short_stats.csv --p95-ms 2500 --p99-ms 5000

Every endpoint row and the aggregate must have: at least one request, a failure ratio of at most
`max_failure_ratio` (0 by default: a single failed request breaches), and p95 / p99 response times
within the bounds. Exits 1 and prints each breach when one is breached, 0 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

AGGREGATE = "Aggregated"


@dataclass(frozen=True)
class SLO:
    """Bounds every row of a locust stats CSV must meet."""

    p95_ms: float
    p99_ms: float
    max_failure_ratio: float = 0.0


@dataclass(frozen=True)
class EndpointStats:
    """One row of locust's stats CSV (percentiles are None when the row has no requests)."""

    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _number(value: str) -> float | None:
    return None if value in ("", "N/A") else float(value)


def read_stats(path: Path) -> list[EndpointStats]:
    """Parse `<prefix>_stats.csv`; the aggregate row is named 'Aggregated'."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"locust stats file {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"Name", "Request Count", "Failure Count", "Requests/s", "50%", "95%", "99%"} - set(
            reader.fieldnames or ()
        )
        if missing:
            raise ValueError(f"{path} is not a locust stats CSV (missing columns: {', '.join(sorted(missing))})")
        return [
            EndpointStats(
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=float(row["Requests/s"]),
                p50_ms=_number(row["50%"]),
                p95_ms=_number(row["95%"]),
                p99_ms=_number(row["99%"]),
            )
            for row in reader
        ]


def check(stats: list[EndpointStats], slo: SLO) -> list[str]:
    """Human-readable breaches of `slo` (empty when every row meets it)."""
    if not any(s.name == AGGREGATE for s in stats):
        return ["no 'Aggregated' row: the stats file is incomplete"]
    breaches = []
    for s in stats:
        if s.requests == 0:
            breaches.append(f"{s.name}: no requests were made")
            continue
        if s.failure_ratio > slo.max_failure_ratio:
            breaches.append(
                f"{s.name}: failure ratio {s.failure_ratio:.4f} ({s.failures}/{s.requests}) > {slo.max_failure_ratio}"
            )
        for label, value, bound in (("p95", s.p95_ms, slo.p95_ms), ("p99", s.p99_ms, slo.p99_ms)):
            if value is None or value > bound:
                breaches.append(f"{s.name}: {label} {value} ms > {bound:g} ms")
    return breaches


def format_table(stats: list[EndpointStats]) -> str:
    """A compact table of the rows the SLO is checked on."""
    lines = [f"{'endpoint':<32} {'reqs':>7} {'fails':>6} {'req/s':>8} {'p50':>7} {'p95':>7} {'p99':>7}"]
    fmt = lambda v: "N/A" if v is None else f"{v:.0f}"  # noqa: E731
    for s in stats:
        lines.append(f"{s.name:<32} {s.requests:>7} {s.failures:>6} {s.rps:>8.1f} "
                     f"{fmt(s.p50_ms):>7} {fmt(s.p95_ms):>7} {fmt(s.p99_ms):>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.slo", description=__doc__.splitlines()[0])
    parser.add_argument("stats_csv", type=Path, help="locust's <prefix>_stats.csv")
    parser.add_argument("--p95-ms", type=float, required=True)
    parser.add_argument("--p99-ms", type=float, required=True)
    parser.add_argument("--max-failure-ratio", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        stats = read_stats(args.stats_csv)
    except (OSError, ValueError) as exc:
        print(f"slo: {exc}", file=sys.stderr)
        return 2
    print(format_table(stats))
    breaches = check(stats, SLO(args.p95_ms, args.p99_ms, args.max_failure_ratio))
    for breach in breaches:
        print(f"SLO BREACHED: {breach}")
    print("SLO: breached" if breaches else "SLO: met")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
