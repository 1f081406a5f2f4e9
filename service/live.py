"""Live registry inside a worker: serve what the registry says, swap between batches, several versions.

    alias file ($BENTOML_HOME/glasses_registry.json), re-read every RELOAD_POLL_S by a thread
      -> a served alias (production, candidate) now names a tag not loaded here: load it, check it
         (check_servable, warm-up, parity probe against registration); refused = logged, counted in
         glasses_reload_total{result="refused"}, listed in GET /model, and the old version serves on
      -> a new immutable Snapshot {alias: Version} replaces the old one (one reference assignment)
    request -> pick(): ?model= / X-Glasses-Model, else the candidate's canary share, else production
      -> decoded at that version's size -> that version's own dispatcher (a batch never mixes
         versions), so a request finishes on the version it started with, whatever is promoted meanwhile
      -> shadow: the candidate scores the same images in the background; agreement is counted
    A version that left the snapshot is shut down once its last in-flight request is done.
$GLASSES_MODEL pins production (the candidate alias is still followed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import numpy as np

from glasses import cards, monitoring, registry
from glasses.config import (
    CANDIDATE_ALIAS,
    DRIFT_MIN_VERDICTS,
    DRIFT_PSI_EVERY,
    DRIFT_WINDOW,
    MODEL_HEADER,
    PARITY_TOLERANCE,
    PRODUCTION_ALIAS,
    RELOAD_POLL_S,
    SERVE_DISPATCH,
    SERVE_MAX_BATCH_SIZE,
    SERVE_MAX_LATENCY_MS,
    SERVE_RUNTIME,
    SERVED_ALIASES,
    SHADOW_MAX_PENDING,
)
from service.batching import ModelBatching
from glasses.runtimes import load_classifier
from service.metrics import ServiceMetrics

logger = logging.getLogger("bentoml.glasses")


class UnknownModel(LookupError):
    """A request asked for a version or alias this worker does not serve (404)."""


class VersionRefused(RuntimeError):
    """A version failed to load or to pass the serving checks; the message says why."""


@dataclass(eq=False)
class Version:
    """One loaded, checked version and what the worker observes of it."""

    tag: str
    card: dict[str, Any]
    classifier: Callable[[np.ndarray], np.ndarray]
    load_s: float
    parity: float | None  # max |dp| on the probe against registration (None: nothing recorded)
    reference: list[int] | None  # histogram of P(glasses) on its test photos (None: not recorded)
    inflight: int = 0
    score: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None
    dispatcher: Any = None
    explainer: Any = None  # /explain's replica of `classifier`, made on first use (service/pages.py)
    recent: deque = field(default_factory=lambda: deque(maxlen=DRIFT_WINDOW))
    psi: float | None = None
    unscored: int = 0  # verdicts since its PSI was last computed

    @property
    def threshold(self) -> float:
        return self.card["threshold"]

    @property
    def image_size(self) -> int:
        return self.card["preprocessing"]["image_size"]

    @property
    def runtime(self) -> str:
        return self.card["runtime"]

    @property
    def framing(self) -> str:
        return self.card["preprocessing"].get("framing", "none")


@dataclass(frozen=True)
class Snapshot:
    """What a worker serves at one moment: served alias -> Version, and each one's mode."""

    versions: dict[str, Version]
    modes: dict[str, dict[str, Any]]  # alias -> {"traffic": share, "shadow": bool}
    aliases: dict[str, dict[str, Any]]  # every alias in the registry, as last read


def load_version(tag: str) -> Version:
    """Load one version through the runtime loader and check it; VersionRefused says why not."""
    start = time.monotonic()
    try:
        stored = registry.get_model(tag)
        card = cards.model_card(stored)
        cards.check_servable(card)
        size = card["preprocessing"]["image_size"]
        classifier = load_classifier(stored, SERVE_RUNTIME, size)  # tf | litert, as the version allows
        card["runtime"] = classifier.runtime
        classifier.warm_up()  # the runtime's own batch-size regimes
        meta = stored.info.metadata or {}
        parity = None
        if meta.get("parity_probe"):
            raw = getattr(classifier, "raw", classifier)  # the model file's own output, before any calibration
            parity = monitoring.parity_error(meta["parity_probe"], raw(monitoring.probe_pixels(size)))
            if parity > PARITY_TOLERANCE:
                raise VersionRefused(f"parity probe: max |dp| {parity:.3g} > {PARITY_TOLERANCE:g} against its "
                                     f"registration (a corrupt, swapped or mis-converted model file)")
    except VersionRefused:
        raise
    except Exception as exc:  # a missing, corrupt or foreign model: refused, never served
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise VersionRefused(f"{type(exc).__name__}: {first}"[:300]) from None
    return Version(tag=str(stored.tag), card=card, classifier=classifier, load_s=time.monotonic() - start,
                   parity=parity, reference=(meta.get("reference_distribution") or {}).get("counts"))


class LiveModels:
    """The versions a worker serves, kept in line with the registry by a polling thread."""

    def __init__(self, pin: str | None = None) -> None:
        self.pin = pin
        self.metrics = ServiceMetrics()
        self.batching = ModelBatching(SERVE_MAX_LATENCY_MS, SERVE_MAX_BATCH_SIZE, greedy=SERVE_DISPATCH == "greedy")
        self.refused: dict[str, dict[str, Any]] = {}  # tag -> {"alias", "reason", "at"}
        self.shadow_counts: dict[tuple[str, str], dict[str, int]] = {}
        self._shadow_pending = 0
        self._retiring: list[Version] = []
        self._retiring_lock = threading.Lock()
        self._seen: dict | None = None
        self.snapshot = self._start()
        self.last_check = time.time()
        threading.Thread(target=self._poll_forever, name="glasses-live", daemon=True).start()

    # --- following the registry (poll thread) --------------------------------------------------
    def _wanted(self, aliases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Served alias -> {"tag", "traffic", "shadow"} the registry (or the pin) asks for."""
        wanted = {a: aliases[a] for a in SERVED_ALIASES if a in aliases}
        if self.pin:
            wanted[PRODUCTION_ALIAS] = {"tag": str(registry.get_model(self.pin).tag), "traffic": 0.0, "shadow": False}
        elif PRODUCTION_ALIAS not in wanted:  # nothing promoted yet: newest, else the bundled default
            wanted[PRODUCTION_ALIAS] = {"tag": registry.resolve()[0], "traffic": 0.0, "shadow": False}
        return wanted

    def _start(self) -> Snapshot:
        """The first snapshot: production must load (else the worker does not start), candidate may fail."""
        aliases = registry.read_aliases()
        self._seen = aliases
        wanted = self._wanted(aliases)
        fallbacks = [] if self.pin else _earlier_production_targets(wanted[PRODUCTION_ALIAS]["tag"])
        production = None
        for tag in [wanted[PRODUCTION_ALIAS]["tag"], *fallbacks]:
            production = self._try_load(PRODUCTION_ALIAS, tag)
            if production is not None:
                break
        if production is None:
            raise VersionRefused(f"no servable production version: {self.refused}")
        versions, modes = {PRODUCTION_ALIAS: production}, {PRODUCTION_ALIAS: wanted[PRODUCTION_ALIAS]}
        if CANDIDATE_ALIAS in wanted:
            candidate = self._try_load(CANDIDATE_ALIAS, wanted[CANDIDATE_ALIAS]["tag"])
            if candidate is not None:
                versions[CANDIDATE_ALIAS], modes[CANDIDATE_ALIAS] = candidate, wanted[CANDIDATE_ALIAS]
        follows = registry.registry_dir() / "glasses_registry.json"
        pinned = f"pinned by GLASSES_MODEL={self.pin}" if self.pin else f"following {follows}"
        logger.info("glasses live: worker %d serving %s; %s every %.1f s", os.getpid(),
                    ", ".join(f"{a}={v.tag}" for a, v in versions.items()), pinned, RELOAD_POLL_S)
        return Snapshot(versions, modes, aliases)

    def _try_load(self, alias: str, tag: str) -> Version | None:
        """Load and check `tag` for `alias`; None (logged, counted, remembered) when refused."""
        if tag in self.refused:
            return None
        try:
            version = load_version(tag)
        except VersionRefused as exc:
            self.refused[tag] = {"alias": alias, "reason": str(exc), "at": _now()}
            self.metrics.reload(alias, tag, "refused")
            logger.error("glasses live: worker %d refused %s for %s: %s", os.getpid(), tag, alias, exc)
            return None
        self.metrics.reload(alias, version.tag, "loaded")
        return version

    def sync(self) -> None:
        """Re-read the aliases; load, check and swap in what changed (one log line per swap)."""
        aliases = registry.read_aliases()
        self.last_check = time.time()
        if aliases == self._seen:
            return
        self._seen = aliases
        old = self.snapshot
        loaded = {v.tag: v for v in old.versions.values()}
        versions, modes = {}, {}
        for alias, want in self._wanted(aliases).items():
            version = loaded.get(want["tag"]) or self._try_load(alias, want["tag"])
            if version is not None:
                versions[alias], modes[alias] = version, want
            elif alias in old.versions:  # refused: the old one keeps serving, in its old mode
                versions[alias], modes[alias] = old.versions[alias], old.modes[alias]
        self.snapshot = Snapshot(versions, modes, aliases)
        for alias in sorted(set(old.versions) | set(versions)):
            before, after = old.versions.get(alias), versions.get(alias)
            if before is not after:
                logger.info("glasses live: worker %d swapped %s: %s -> %s%s", os.getpid(), alias,
                            before.tag if before else "-", after.tag if after else "-",
                            f" (loaded and checked in {after.load_s:.2f} s)" if after else "")
        kept = {id(v) for v in versions.values()}
        with self._retiring_lock:
            self._retiring += [v for v in old.versions.values() if id(v) not in kept]

    def _poll_forever(self) -> None:
        while True:
            time.sleep(RELOAD_POLL_S)
            try:
                self.sync()
            except registry.RegistryError as exc:  # a damaged alias file: keep serving, say so
                logger.error("glasses live: cannot follow the registry: %s", exc)
            except Exception:
                logger.exception("glasses live: registry poll failed")

    # --- serving (event loop) ------------------------------------------------------------------
    def pick(self, asked: str | None) -> Version:
        """The version a request is answered by; counted in flight until `done`. UnknownModel -> 404."""
        self._retire_idle()
        snap = self.snapshot
        if asked:
            version = _lookup(snap, asked)
        else:
            version = snap.versions[PRODUCTION_ALIAS]
            candidate, mode = snap.versions.get(CANDIDATE_ALIAS), snap.modes.get(CANDIDATE_ALIAS, {})
            if candidate is not None and mode.get("traffic") and random.random() < mode["traffic"]:
                version = candidate
        version.inflight += 1
        return version

    def done(self, version: Version) -> None:
        version.inflight -= 1

    def production(self) -> Version:
        return self.snapshot.versions[PRODUCTION_ALIAS]

    async def score(self, version: Version, pixels: np.ndarray, app: Any) -> np.ndarray:
        """P(glasses) of decoded pixels from `version`'s own batching queue; observed in the metrics."""
        if version.score is None:
            self.batching.bind(app)
            version.score, version.dispatcher = self.batching.batcher(version.classifier)
        probabilities = np.asarray(await version.score(pixels))
        self._observe(version, probabilities)
        return probabilities

    def _observe(self, version: Version, probabilities: np.ndarray) -> None:
        self.metrics.verdicts(version.tag, probabilities, version.threshold)
        version.recent.extend(float(p) for p in probabilities)
        version.unscored += len(probabilities)
        if (version.reference and len(version.recent) >= DRIFT_MIN_VERDICTS
                and (version.psi is None or version.unscored >= DRIFT_PSI_EVERY)):
            version.unscored = 0
            version.psi = monitoring.psi(version.reference, version.recent)
            self.metrics.psi(version.tag, version.psi)

    def shadow(self, answered: Version, pixels: np.ndarray, probabilities: np.ndarray, uploads: list[bytes],
               decode: Callable[[bytes, "Version"], Awaitable[np.ndarray]], app: Any) -> None:
        """When the candidate shadows production, score the same images with it in the background."""
        snap = self.snapshot
        candidate = snap.versions.get(CANDIDATE_ALIAS)
        if (candidate is None or not snap.modes[CANDIDATE_ALIAS].get("shadow") or candidate is answered
                or answered is not snap.versions[PRODUCTION_ALIAS]):
            return
        if self._shadow_pending >= SHADOW_MAX_PENDING:
            self.metrics.shadow(answered.tag, candidate.tag, "skipped", len(uploads))
            return
        self._shadow_pending += 1
        candidate.inflight += 1
        asyncio.get_running_loop().create_task(
            self._shadow_one(answered, candidate, pixels, probabilities, uploads, decode, app))

    async def _shadow_one(self, production: Version, candidate: Version, pixels: np.ndarray,
                          probabilities: np.ndarray, uploads: list[bytes], decode: Callable, app: Any) -> None:
        try:
            if (candidate.image_size, candidate.framing) != (production.image_size, production.framing):
                pixels = np.stack([await decode(data, candidate) for data in uploads])
            theirs = await self.score(candidate, pixels, app)
            agree = int(np.sum((probabilities >= production.threshold) == (theirs >= candidate.threshold)))
            counts = self.shadow_counts.setdefault((production.tag, candidate.tag), {"agree": 0, "disagree": 0})
            counts["agree"] += agree
            counts["disagree"] += len(theirs) - agree
            self.metrics.shadow(production.tag, candidate.tag, "agree", agree)
            self.metrics.shadow(production.tag, candidate.tag, "disagree", len(theirs) - agree)
        except Exception as exc:  # a shadow never fails the answered request
            logger.warning("glasses live: shadow scoring by %s failed: %s", candidate.tag, exc)
            self.metrics.shadow(production.tag, candidate.tag, "failed", len(uploads))
        finally:
            self._shadow_pending -= 1
            candidate.inflight -= 1

    def _retire_idle(self) -> None:
        """Shut down the dispatchers of versions no longer served once nothing is in flight on them."""
        if not self._retiring:
            return
        with self._retiring_lock:
            idle = [v for v in self._retiring if v.inflight == 0]
            self._retiring = [v for v in self._retiring if v.inflight != 0]
        for version in idle:
            if version.dispatcher is not None:
                version.dispatcher.shutdown()

    # --- GET /model ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Production's card, plus every alias, what this worker has loaded, refusals and shadow counts."""
        snap = self.snapshot
        served = {alias: {**snap.modes[alias], "tag": v.tag, "runtime": v.runtime, "load_s": round(v.load_s, 3),
                          "parity_max_abs": v.parity, "psi": v.psi, "verdicts_seen": len(v.recent)}
                  for alias, v in snap.versions.items()}
        shadow = {f"{cand} vs {prod}": {**c, "compared": c["agree"] + c["disagree"],
                                        "agreement": c["agree"] / max(1, c["agree"] + c["disagree"])}
                  for (prod, cand), c in self.shadow_counts.items()}
        return {**snap.versions[PRODUCTION_ALIAS].card, "aliases": snap.aliases, "served": served,
                "refused": [{"tag": t, **r} for t, r in list(self.refused.items())], "shadow": shadow,
                "worker_pid": os.getpid(), "pinned": self.pin,
                "reload": {"poll_s": RELOAD_POLL_S, "last_check": datetime.fromtimestamp(
                    self.last_check, timezone.utc).isoformat(timespec="seconds")}}


def _lookup(snap: Snapshot, asked: str) -> Version:
    """A served alias, an alias of the registry naming a loaded tag, or a loaded tag (full or version)."""
    if asked in snap.versions:
        return snap.versions[asked]
    tag = snap.aliases.get(asked, {}).get("tag", asked)
    for version in snap.versions.values():
        if tag in (version.tag, version.tag.split(":", 1)[1]):
            return version
    served = ", ".join(f"{a}={v.tag}" for a, v in snap.versions.items())
    raise UnknownModel(f"model {asked!r} is not served here (served: {served}); ask for an alias or a served tag "
                       f"with ?model= or the {MODEL_HEADER} header")


def _earlier_production_targets(current: str) -> list[str]:
    """Earlier production targets, newest first (a worker starting on a refused target falls back)."""
    seen, order = {current}, []
    for entry in reversed(registry.read_history()):
        for tag in (entry.get("to"), entry.get("from")):
            if entry.get("alias") == PRODUCTION_ALIAS and tag and tag not in seen:
                seen.add(tag)
                order.append(tag)
    return order


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
