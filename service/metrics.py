"""Prometheus metrics of the live registry, exported by BentoML's own /metrics (prometheus_client).

Created in the worker (after BentoML has set PROMETHEUS_MULTIPROC_DIR), so every worker's values
are summed by BentoML's multiprocess collector; the PSI gauge shows the largest live worker's value.

    glasses_verdicts_total{tag, verdict}              verdicts answered, per served version and class
    glasses_probability{tag}                          histogram of the P(glasses) answered
    glasses_shadow_total{production, candidate, outcome=agree|disagree|skipped|failed}
    glasses_reload_total{alias, tag, result=loaded|refused}
    glasses_psi{tag}                                  PSI of the last verdicts against the test split
"""

from __future__ import annotations

import numpy as np

from glasses.config import CLASS_NAMES

PROBABILITY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 10)) + (1.0,)


class ServiceMetrics:
    """The service's own counters, histogram and gauge (one instance per worker)."""

    def __init__(self) -> None:
        import prometheus_client as prom  # imported in the worker: multiprocess mode (see above)

        self._verdicts = prom.Counter("glasses_verdicts", "Verdicts answered, per served version and class",
                                      ["tag", "verdict"])
        self._probability = prom.Histogram("glasses_probability", "P(glasses) of the verdicts answered",
                                           ["tag"], buckets=PROBABILITY_BUCKETS)
        self._shadow = prom.Counter("glasses_shadow", "Shadow comparisons of candidate and production verdicts",
                                    ["production", "candidate", "outcome"])
        self._reload = prom.Counter("glasses_reload", "Versions loaded or refused after an alias change",
                                    ["alias", "tag", "result"])
        self._psi = prom.Gauge("glasses_psi", "PSI of the last verdicts' P(glasses) against the test split",
                               ["tag"], multiprocess_mode="livemax")

    def verdicts(self, tag: str, probabilities: np.ndarray, threshold: float) -> None:
        glasses = int(np.sum(probabilities >= threshold))
        if glasses:
            self._verdicts.labels(tag, CLASS_NAMES[1]).inc(glasses)
        if len(probabilities) - glasses:
            self._verdicts.labels(tag, CLASS_NAMES[0]).inc(len(probabilities) - glasses)
        histogram = self._probability.labels(tag)
        for p in probabilities:
            histogram.observe(float(p))

    def shadow(self, production: str, candidate: str, outcome: str, n: int) -> None:
        if n:
            self._shadow.labels(production, candidate, outcome).inc(n)

    def reload(self, alias: str, tag: str, result: str) -> None:
        self._reload.labels(alias, tag, result).inc()

    def psi(self, tag: str, value: float) -> None:
        self._psi.labels(tag).set(value)
