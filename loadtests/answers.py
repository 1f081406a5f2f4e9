"""What a correct answer to a single-image POST /predict looks like, per server (pure Python).

Servers compared by the benchmark answer the same request in different shapes, each judged by
what that server returns:
- "object": one verdict object (the service, the naive server);
- "list": a list holding exactly one verdict object (the BentoML-idiomatic peer: a batchable API
  over list[PIL.Image] answers one list per request).

A verdict object has `verdict` in CLASS_NAMES and `probability` in [0, 1]. No locust, BentoML or
TensorFlow here: the locustfile (gevent) and the benchmark both import it.
"""

from __future__ import annotations

from typing import Any

from glasses.config import CLASS_NAMES

ANSWER_SHAPES: tuple[str, ...] = ("object", "list")


def verdict_error(item: Any) -> str | None:
    """Why `item` is not a verdict object, or None when it is one."""
    if not isinstance(item, dict):
        return f"expected a JSON object, got {type(item).__name__}"
    if item.get("verdict") not in CLASS_NAMES:
        return f"bad verdict {item.get('verdict')!r}"
    probability = item.get("probability")
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0.0 <= probability <= 1.0:
        return f"bad probability {probability!r}"
    return None


def predict_answer_error(body: Any, shape: str = "object") -> str | None:
    """Why `body` (the parsed JSON answer to one image) is not a correct answer of `shape`, or None."""
    if shape == "object":
        return verdict_error(body)
    if shape == "list":
        if not isinstance(body, list) or len(body) != 1:
            return f"expected a list of 1 verdict, got {str(body)[:200]}"
        return verdict_error(body[0])
    raise ValueError(f"unknown answer shape {shape!r} (one of {', '.join(ANSWER_SHAPES)})")
