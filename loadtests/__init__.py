"""Locust load tests, SLO checks and the serving benchmark."""

import glasses  # noqa: F401  (first: quiets TensorFlow, see glasses/quiet.py)
