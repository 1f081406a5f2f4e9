"""The BentoML verdict service, its upload parsing, inference and client."""

import glasses  # noqa: F401  (first: quiets TensorFlow, see glasses/quiet.py)
