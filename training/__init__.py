"""The offline pipeline: download, prepare, tune, evaluate, register (see training/cli.py)."""

import glasses  # noqa: F401  (first: quiets TensorFlow, see glasses/quiet.py)
