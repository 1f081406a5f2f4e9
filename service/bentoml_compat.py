"""The one module that touches BentoML's private internals (`bentoml._internal`, `_bentoml_impl`).

Private parts change without notice between releases, so importing this module first checks that the
installed BentoML is the version they were checked against (the pin in pyproject.toml) and refuses to
go on otherwise. tests/test_bentoml_compat.py checks every attribute and signature used here or by
the code built on it (service/batching.py), so an upgrade fails there, by name, before it fails in use.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import bentoml

PINNED_VERSION = "1.4.40"  # == the bentoml pin in pyproject.toml and bentofile.yaml (tested)


class BentoMLVersionError(RuntimeError):
    """The installed BentoML is not the version this module's internals were checked against."""


def check_version(installed: str = bentoml.__version__) -> None:
    """Raise BentoMLVersionError unless `installed` is PINNED_VERSION."""
    if installed != PINNED_VERSION:
        raise BentoMLVersionError(
            f"bentoml {installed} is installed, but this code uses BentoML internals checked against "
            f"{PINNED_VERSION} only (service/bentoml_compat.py): install bentoml=={PINNED_VERSION}, or "
            f"re-check those internals (tests/test_bentoml_compat.py) and move the pin"
        )


check_version()

from bentoml._internal.configuration.containers import BentoMLContainer  # noqa: E402
from bentoml._internal.context import server_context  # noqa: E402
from bentoml._internal.marshal.dispatcher import CorkDispatcher, NonBlockSema  # noqa: E402
from bentoml._internal.models import ModelStore  # noqa: E402

__all__ = ["PINNED_VERSION", "BentoMLVersionError", "CorkDispatcher", "NonBlockSema", "BatchInfer",
           "check_version", "api_factory", "api_dispatchers", "batch_infer", "observe_batch_size",
           "model_store_at"]

BatchInfer = Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


def api_factory(app: Any, api_name: str) -> Any | None:
    """The `ServiceAppFactory` behind the API `api_name` of a BentoML ASGI `app`, or None.

    Each API route's endpoint is `functools.partial(factory.api_endpoint_wrapper, name)`.
    """
    for route in app.router.routes:
        if getattr(route, "name", None) == api_name:
            return getattr(getattr(route.endpoint, "func", None), "__self__", None)
    return None


def api_dispatchers(factory: Any) -> dict[str, CorkDispatcher]:
    """The factory's CorkDispatcher per batchable API name (mutable: replacing one takes effect)."""
    return getattr(factory, "dispatchers", {})


def batch_infer(factory: Any, api_name: str) -> BatchInfer:
    """`factory.batch_infer` bound to `api_name`: `await f((pixels,), {})` queues on that API's dispatcher."""
    return functools.partial(factory.batch_infer, api_name)


def observe_batch_size(factory: Any, api_name: str, n: int) -> None:
    """Count a batch of `n` in BentoML's `adaptive_batch_size` histogram of `api_name`, as BentoML does."""
    if getattr(factory, "enable_metrics", False):
        factory.adaptive_batch_size_hist.labels(
            runner_name=factory.service.name, worker_index=server_context.worker_index,
            method_name=api_name, service_version=server_context.bento_version,
            service_name=server_context.bento_name).observe(n)


@contextlib.contextmanager
def model_store_at(models_dir: Path) -> Iterator[ModelStore]:
    """Point this process's BentoML model store at `models_dir` for the block (even if already configured)."""
    store = ModelStore(str(models_dir))
    with BentoMLContainer.model_store.patch(store):
        yield store
