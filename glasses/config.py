"""Configuration in one place: names, paths, defaults and profiles shared by training and serving.

The label convention is stated here, once, and everything else imports it:
    label 1 = "glasses"    = the person in the image wears glasses (sunglasses count for CelebA data);
    label 0 = "no_glasses" = they do not.
Models output P(glasses) from a sigmoid. (The paper's `image_dataset_from_directory` ordering made
glasses = 0; we deliberately do not inherit that inversion.)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- labels -------------------------------------------------------------------------------------
CLASS_NAMES: tuple[str, str] = ("no_glasses", "glasses")  # index = label
POSITIVE_CLASS = "glasses"
CLASS_MAP: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
FOLDER_ALIASES: dict[str, str] = {"glasses": "glasses", "no_glasses": "no_glasses", "no-glasses": "no_glasses"}

# --- images -------------------------------------------------------------------------------------
IMAGE_SIZE = 128  # the paper's choice
ALLOWED_SIZES: tuple[int, ...] = (64, 128, 256)
MAX_IMAGE_PIXELS = 50_000_000  # decompression-bomb guard (a 48 MP phone photo still fits)

# glibc malloc thresholds for the processes that decode images (glasses/allocator.py): blocks up to
# the mmap threshold come from the heap and are reused, and up to the trim threshold of free heap top
# is kept, so a framed 1024² photo's MB-sized buffers are not faulted in afresh for every request.
MALLOC_MMAP_THRESHOLD_BYTES = 8 * 1024 * 1024  # a 1024² photo's buffers fit; a 12 MP photo's are mapped
MALLOC_TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024

# --- face framing (glasses/faces.py) -----------------------------------------------------------
# A version with metadata framing="face" sees every photo cropped to the training photos' framing
# around the face BlazeFace finds; a photo with no face is refused (422). The detector is Google's
# BlazeFace short-range model, carried inside the `mediapipe` wheel on PyPI (Apache-2.0):
# scripts/fetch_face_detector.py extracts that one file at set-up (never at run time), checked by sha256.
FRAMINGS: tuple[str, ...] = ("none", "face")
FACE_DETECTOR_PACKAGE = ("mediapipe", "0.10.14")
FACE_DETECTOR_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
FACE_DETECTOR_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
FACE_MIN_SCORE = 0.5  # detector confidence below which a photo has no face
# Where the face box sits in the training photos (medians over the CelebA test photos, both sets):
# box width / frame width, box height / frame height, box centre x / width, centre y / height.
FACE_FRAME_BOX_W, FACE_FRAME_BOX_H = 0.551, 0.521
FACE_FRAME_CENTRE = (0.502, 0.573)

# --- paths --------------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parent.parent
EXCLUDED_IDS_FILE = Path(__file__).resolve().parent / "data" / "excluded-kaggle-ids.txt"
FACE_DETECTOR_FILE = Path(__file__).resolve().parent / "data" / "face_detection_short_range.tflite"  # not committed
WORK_DIR = Path(os.environ.get("GLASSES_WORK_DIR", REPO_ROOT / "artifacts"))  # caches, tuner dirs, reports
BUNDLED_MODEL_FILE = REPO_ROOT / "models" / "glasses_classifier.bentomodel"

# --- registry -----------------------------------------------------------------------------------
MODEL_NAME = "glasses_classifier"
MODEL_FILE = "model.keras"  # the Keras file inside a stored version and a run directory
MODEL_ENV_VAR = "GLASSES_MODEL"  # a tag such as glasses_classifier:abc123 pins what is served
REGISTRY_DIR_ENV_VAR = "GLASSES_REGISTRY_DIR"  # alias file + history, default $BENTOML_HOME (glasses/registry.py)
PRODUCTION_ALIAS = "production"  # what `registry promote` sets; every worker serves it
CANDIDATE_ALIAS = "candidate"  # loaded beside production: a canary share (--traffic) or a shadow (--shadow)
SERVED_ALIASES: tuple[str, ...] = (PRODUCTION_ALIAS, CANDIDATE_ALIAS)  # other aliases are bookmarks only
DEFAULT_THRESHOLD = 0.5

# --- Kaggle -------------------------------------------------------------------------------------
KAGGLE_DATASET = "jeffheaton/glasses-or-no-glasses"
KAGGLE_IMAGE_DIR = "faces-spring-2020/faces-spring-2020"

# --- data pipeline ------------------------------------------------------------------------------
SEED = 1234
SPLITS: tuple[str, str, str] = ("train", "val", "test")  # split names, in order
SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test
BATCH_SIZE = 64
SHUFFLE_BUFFER = 2000

# --- tuning, evaluation, quality gate (training/tune.py, evaluate.py, register.py) --------------
OBJECTIVES: tuple[str, ...] = ("val_accuracy", "val_auc", "val_balanced_accuracy")  # all maximised
THRESHOLD_RULES: tuple[str, ...] = ("val_balanced_accuracy",)  # a rule instead of a fixed threshold
CLASS_WEIGHT_MODES: tuple[str, ...] = ("balanced",)
GATE_METRICS: tuple[str, ...] = ("roc_auc", "balanced_accuracy", "accuracy", "f1")
CALIBRATIONS: tuple[str, ...] = ("platt", "temperature")  # fitted on validation (training/calibrate.py)


@dataclass(frozen=True)
class TuningProfile:
    """One `--profile`: the search, the final fit, the decision threshold and the quality gate.

    threshold is a number in (0, 1) or a rule from THRESHOLD_RULES (chosen on the validation split);
    final_epochs 0 keeps the best trial's checkpoint, N retrains the best hyperparameters from scratch
    for up to N epochs (EarlyStopping, best weights restored); class_weight None or "balanced"
    (n / (2 * n_class) from the train split); augment None or a function name in training/augment.py;
    calibration None or one of CALIBRATIONS (fitted on validation at evaluation).
    """

    name: str
    description: str
    search_space: str  # a hypermodel name in training.models.SEARCH_SPACES
    objective: str  # one of OBJECTIVES
    max_epochs: int  # keras_tuner.Hyperband arguments: max_epochs, factor, hyperband_iterations, seed
    factor: int
    hyperband_iterations: int
    seed: int
    patience: int  # EarlyStopping(monitor=objective) inside every trial
    final_epochs: int
    class_weight: str | None
    augment: str | None
    threshold: float | str
    image_size: int
    batch_size: int
    gate_metric: str  # quality gate on the test report (training/register.py)
    gate_floor: float
    calibration: str | None = "platt"
    framing: str = "none"  # one of FRAMINGS: "face" = prepare crops every photo around its face, the version serves so

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"profile {self.name!r}: {'; '.join(problems)}")

    def problems(self) -> list[str]:
        """Every way this profile is invalid (empty when it is valid)."""
        out = []
        for key in ("max_epochs", "factor", "hyperband_iterations", "patience", "batch_size"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1 or (key == "factor" and value < 2):
                out.append(f"{key} must be an integer >= {2 if key == 'factor' else 1}, got {value!r}")
        for key in ("seed", "final_epochs"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 0:
                out.append(f"{key} must be an integer >= 0, got {getattr(self, key)!r}")
        for key in ("name", "description", "search_space"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                out.append(f"{key} must be a non-empty string")
        if self.objective not in OBJECTIVES:
            out.append(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not (self.threshold in THRESHOLD_RULES or (_is_number(self.threshold) and 0 < self.threshold < 1)):
            out.append(f"threshold must be a number in (0, 1) or one of {', '.join(THRESHOLD_RULES)}, "
                       f"got {self.threshold!r}")
        if self.class_weight is not None and self.class_weight not in CLASS_WEIGHT_MODES:
            out.append(f"class_weight must be None or one of {', '.join(CLASS_WEIGHT_MODES)}, got {self.class_weight!r}")
        if self.augment is not None and (not isinstance(self.augment, str) or not self.augment.isidentifier()):
            out.append(f"augment must be None or a function name in training/augment.py, got {self.augment!r}")
        if self.framing not in FRAMINGS:
            out.append(f"framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}")
        if self.image_size not in ALLOWED_SIZES:
            out.append(f"image_size must be one of {', '.join(map(str, ALLOWED_SIZES))}, got {self.image_size!r}")
        if self.gate_metric not in GATE_METRICS:
            out.append(f"gate_metric must be one of {', '.join(GATE_METRICS)}, got {self.gate_metric!r}")
        if self.calibration is not None and self.calibration not in CALIBRATIONS:
            out.append(f"calibration must be None or one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if not _is_number(self.gate_floor) or not 0 <= self.gate_floor <= 1:
            out.append(f"gate_floor must be a number in [0, 1], got {self.gate_floor!r}")
        return out

    def replace(self, **overrides: Any) -> "TuningProfile":
        """A validated copy with some settings changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (what tune.json records)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TuningProfile":
        """A profile from as_dict() output (tune.json), validated like any other."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if isinstance(values.get("threshold"), str) and values["threshold"] not in THRESHOLD_RULES:
            values["threshold"] = float(values["threshold"])  # tune.json of older runs wrote "0.5"
        return cls(**values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Real photos as users send them (both CelebA sources, split by person): the celeba model plus
# per-image standardisation at full width, trained with training/augment.py robust (framing,
# rotation, low resolution, blur, exposure, JPEG) for 14 epochs; Platt calibration on validation.
# Recipe and measurements: models/README.md.
_ROBUST = TuningProfile(
    name="robust",
    description="real photos, any framing: celeba model + per-image standardisation, robust augmentation, calibrated",
    search_space="robust", objective="val_auc",
    max_epochs=1, factor=3, hyperband_iterations=1, seed=SEED, patience=14,
    final_epochs=14, class_weight="balanced", augment="robust", threshold="val_balanced_accuracy",
    image_size=IMAGE_SIZE, batch_size=BATCH_SIZE, gate_metric="roc_auc", gate_floor=0.90,
)
TUNING_PROFILES: dict[str, TuningProfile] = {
    profile.name: profile for profile in (
        TuningProfile(
            name="paper", description="the paper's Hyperband search (objective val_accuracy, 20 epochs, factor 3)",
            search_space="paper", objective="val_accuracy",
            max_epochs=20, factor=3, hyperband_iterations=1, seed=SEED, patience=3,
            final_epochs=20, class_weight=None, augment=None, threshold=DEFAULT_THRESHOLD,
            image_size=IMAGE_SIZE, batch_size=BATCH_SIZE, gate_metric="roc_auc", gate_floor=0.90,
        ),
        TuningProfile(
            name="smoke", description="tiny search for tests and quick checks (2 trials x 2 epochs at 64 px)",
            search_space="paper", objective="val_accuracy",
            max_epochs=2, factor=3, hyperband_iterations=1, seed=SEED, patience=1,
            final_epochs=0, class_weight=None, augment=None, threshold=DEFAULT_THRESHOLD,
            image_size=64, batch_size=32, gate_metric="roc_auc", gate_floor=0.5,
        ),
        # Real photos (../shared/data/celeba-glasses, 5.7 % glasses): luma input + flip-averaged
        # global-average-pooling CNN (training/models.py build_celeba_hypermodel, all values fixed),
        # augmentation training/augment.py celeba, class weights, val AUC. Hyperband degenerates to one
        # 1-epoch trial (a check); the model is one 16-epoch fit (cosine LR over those 16 epochs), best
        # val-AUC epoch kept (patience = all epochs). Recipe and the experiments behind it: models/README.md.
        TuningProfile(
            name="celeba",
            description="real photos: luma + flip-averaged GAP CNN, augmentation, class weights, val AUC, val threshold",
            search_space="celeba", objective="val_auc",
            max_epochs=1, factor=3, hyperband_iterations=1, seed=SEED, patience=16,
            final_epochs=16, class_weight="balanced", augment="celeba", threshold="val_balanced_accuracy",
            image_size=IMAGE_SIZE, batch_size=BATCH_SIZE, gate_metric="roc_auc", gate_floor=0.90,
        ),
        _ROBUST,
        # `robust` on face-framed photos: prepare crops every photo to the training framing around its
        # face (glasses/faces.py), so the augmentation's warp narrows to the detector's jitter
        # (training/augment.py framed); the version serves with framing "face". models/README.md.
        dataclasses.replace(_ROBUST, name="framed", augment="framed", framing="face",
                            description="robust, trained and served on photos cropped around the detected face"),
    )
}
# How fast a training step runs, never what it computes (training/acceleration.py; measurements in
# docs/training.md). Precision: "auto" = mixed_bfloat16 where the CPU has avx512_bf16/amx_bf16 and
# oneDNN is on, else float32 (the sigmoid output and the loss are float32 either way; the saved
# model is float32). XLA: "auto" = off on CPU. Threads: 0 = TensorFlow's default (one per core).
TRAIN_PRECISION = os.environ.get("GLASSES_PRECISION", "auto")  # auto | float32 | mixed_bfloat16
TRAIN_JIT = os.environ.get("GLASSES_JIT", "auto")  # auto | on | off
TRAIN_INTRA_THREADS = int(os.environ.get("GLASSES_INTRA_THREADS", "0"))
TRAIN_INTER_THREADS = int(os.environ.get("GLASSES_INTER_THREADS", "0"))
TRAIN_STEPS_PER_EXECUTION = int(os.environ.get("GLASSES_STEPS_PER_EXECUTION", "1"))
TUNING_SUBDIR = "tuning"  # WORK_DIR/tuning/<profile>-<data fingerprint[:12]>/ (keras-tuner project)
RUNS_SUBDIR = "runs"  # WORK_DIR/runs/<timestamp>-<profile>-<id>/ (layout: training/rundir.py)
IMBALANCE_WARNING_BELOW = 0.3  # minority-class share under which accuracy objectives get a warning
# The paper's published figures, printed beside ours by `glasses-train experiments`.
PAPER_RESULTS: dict[str, dict] = {
    "perceptron": {"accuracy": 0.87, "loss": 0.27},
    "batchnorm_cnn": {"accuracy": 0.889},
    "hyperband": {"accuracy": 0.99, "loss": 0.10},
}

# --- model runtimes (training/convert.py converts, glasses/runtimes.py loads) -------------------
LITERT_MODEL_FILE = "model.tflite"  # beside MODEL_FILE when the LiteRT conversion passed its check
RUNTIMES: tuple[str, ...] = ("tf", "litert")
# Which runtime serves: "auto" = LiteRT when the version has a model.tflite, else TensorFlow.
SERVE_RUNTIME = os.environ.get("GLASSES_RUNTIME", "auto")
# max |P(glasses) LiteRT - Keras| on the check images, else the conversion is refused. A conversion that
# drops or mixes up weights is off by > 0.05; the `robust` model's per-image standardisation divides by
# the image's contrast, which amplifies float32 summation-order differences on flat check images to
# ~7e-5 (4.5e-7 for the `celeba` model): 2e-4 still refuses every broken conversion.
LITERT_TOLERANCE = 2e-4
LITERT_THREADS = int(os.environ.get("GLASSES_LITERT_THREADS", "1"))  # XNNPACK threads per interpreter (measured: docs/loadtests.md)
# Interpreter batch: larger batches run in chunks of this size (the tensor arena grows with the batch:
# ~75 MB RSS at 16 against ~230 MB at 64 for the bundled model; per image, 16 is as fast).
LITERT_MAX_BATCH = 16

# --- prediction service (service/) --------------------------------------------------------------
# Request limits (bad input gets a 4xx JSON, see docs/service.md). The body limit fits a batch of
# phone photos; a request over it is refused with 413 before it is read into memory.
MAX_REQUEST_BYTES = 32 * 1024 * 1024  # whole HTTP body of any POST
MAX_BATCH_IMAGES = 32  # images in one /predict_batch request
# Slow clients and large bodies (service/limits.py). A connection whose request head is not complete
# HEADER_TIMEOUT_S after it opened (or after its previous response) is closed; a body not received in
# full BODY_TIMEOUT_S after the service starts reading it gets 408. Bodies of UPLOAD_BUDGET_MIN_BYTES or
# more share UPLOAD_BUDGET_BYTES per worker: past it, a request waits (its body unread, in the socket)
# up to UPLOAD_WAIT_S, then 503. A body in flight costs ~3x its size (parser, bytes, decoded pixels).
HEADER_TIMEOUT_S = float(os.environ.get("GLASSES_HEADER_TIMEOUT_S", "10"))
BODY_TIMEOUT_S = float(os.environ.get("GLASSES_BODY_TIMEOUT_S", "60"))
UPLOAD_BUDGET_BYTES = int(os.environ.get("GLASSES_UPLOAD_BUDGET_BYTES", str(64 * 1024 * 1024)))
UPLOAD_BUDGET_MIN_BYTES = 1024 * 1024
UPLOAD_WAIT_S = 30.0
# Adaptive batching and process layout, chosen from measurements on the 2-core box (docs/service.md)
# (the reasoning is in the comment at the top of service/service.py).
SERVE_MAX_BATCH_SIZE = 64
SERVE_MAX_LATENCY_MS = 3000  # queueing bound before a request is shed with 503
SERVE_WORKERS = int(os.environ.get("GLASSES_SERVE_WORKERS", "2"))  # processes, each with its own model and GIL
SERVE_THREADS = 1  # threads running batches (the dispatcher runs one batch at a time anyway)
SERVE_DISPATCH = os.environ.get("GLASSES_DISPATCH", "greedy")  # "greedy" | "cork" (BentoML's own rule)
DECODE_THREADS = int(os.environ.get("GLASSES_DECODE_THREADS", "4"))  # threads decoding uploads per worker (PIL releases the GIL)
# Uploads smaller than this are decoded on the event loop (no thread hop); larger ones in DECODE_THREADS.
DECODE_INLINE_BYTES = int(os.environ.get("GLASSES_DECODE_INLINE_BYTES", "0"))
# Per-request costs of BentoML's HTTP stack the service does not need by default (docs/service.md):
# one access-log line per request, and OpenTelemetry spans nobody exports (no tracing exporter is set).
SERVE_ACCESS_LOG = os.environ.get("GLASSES_ACCESS_LOG", "0") == "1"
SERVE_TRACING = os.environ.get("GLASSES_TRACING", "0") == "1"  # 1: spans as BentoML makes them
# Live registry (service/live.py, docs/service.md "Live registry"). Each worker re-reads the alias
# file every RELOAD_POLL_S; a change is loaded, checked and swapped in, so every worker serves the new
# target within RELOAD_POLL_S + its load-and-check time (the bound: RELOAD_BOUND_S, measured in docs/).
RELOAD_POLL_S = float(os.environ.get("GLASSES_RELOAD_POLL_S", "1.0"))
RELOAD_BOUND_S = 5.0
MODEL_HEADER = "X-Glasses-Model"  # or ?model=: an alias (production, candidate, ...) or a loaded tag
SHADOW_MAX_PENDING = 64  # shadow scorings queued per worker; past it a shadow comparison is skipped (counted)
# Parity probe and verdict drift (glasses/monitoring.py): recorded at registration, checked when serving.
PROBE_IMAGES = 4
PARITY_TOLERANCE = 1e-4  # max |P(glasses) at registration - P after loading| on the probe
DRIFT_BINS = 10  # reference histogram of P(glasses) on the test split
DRIFT_WINDOW = 500  # PSI over the last N verdicts of a version (per worker)
DRIFT_MIN_VERDICTS = 100  # no PSI before this many verdicts
DRIFT_PSI_EVERY = 50  # recompute a version's PSI after this many new verdicts (not on every request)
DRIFT_WORRY_PSI = 0.25  # the value an operator should act on (0.1-0.25: watch)
# POST /explain (service/explain.py): occlusion patch and stride as fractions of the model's input side,
# copies scored per classifier call, the longest side of the returned PNG; at most EXPLAIN_CONCURRENCY
# explanations run at once and EXPLAIN_QUEUE more may wait (beyond that: 429), none longer than
# EXPLAIN_WAIT_S (then 503), so explanations never pile up in front of /predict's CPU.
EXPLAIN_PATCH = 1 / 6
EXPLAIN_STRIDE = 1 / 16
EXPLAIN_CHUNK = 32
EXPLAIN_MAX_SIDE = 512
EXPLAIN_CONCURRENCY = 1
EXPLAIN_QUEUE = 2
EXPLAIN_WAIT_S = 10.0
# Which classifier /explain runs: "own" = a replica of the served version (LiteRT: a second interpreter
# with EXPLAIN_THREADS threads, so /predict's batches never wait for its lock); "shared" = the batches'
# own classifier (kept only so benchmarks/bench_explain.py can measure the difference in one run).
EXPLAIN_RUNTIME = os.environ.get("GLASSES_EXPLAIN_RUNTIME", "own")
EXPLAIN_RUNTIMES = ("own", "shared")
EXPLAIN_THREADS = 1

# --- prepare (training/prepare.py, sources.py, cache.py, split.py) ------------------------------
CACHE_SUBDIR = "cache"  # WORK_DIR/cache/<kind>-<size>-<fingerprint[:16]>/
CSV_BLOCKSIZE = "16MB"  # dask.dataframe.read_csv partition size (CSV may exceed memory)
DECODE_CHUNK = 32  # images per dask task (upper bound; small sources get smaller chunks)
PREPARE_SCHEDULER = "threads"  # local dask scheduler; measured faster than processes here (benchmarks/)
LABELS_CSV = "labels.csv"  # optional file in a folders: source
LABELS_FILE_COLUMN = "file"  # path relative to the folders: root, e.g. glasses/000123.jpg
GROUP_COLUMNS: tuple[str, ...] = ("celeba_identity", "identity", "person", "group")  # first present wins
KAGGLE_HOST = "www.kaggle.com"
KAGGLE_TIMEOUT = 10.0  # seconds to wait for Kaggle to answer before giving up

# --- label review (training/review.py, docs/review.md) ------------------------------------------
REVIEW_FOLDS = 5  # folds grouped by person: each photo is scored by a classifier that never saw its person
REVIEW_C = 0.1  # inverse L2 strength of the per-fold logistic regression on standardised features
REVIEW_SHEET_TOP = 50  # suspects on the contact sheet and the HTML page

# --- load tests and serving benchmark (loadtests/) ----------------------------------------------
# Generated upload set in realistic sizes: CelebA photo JPEGs and Kaggle GAN-face PNGs.
LOADTEST_JPEG_SIZE: tuple[int, int] = (178, 218)  # width, height
LOADTEST_PNG_SIZE: tuple[int, int] = (1024, 1024)
LOADTEST_IMAGE_COUNTS: dict[str, int] = {"jpeg": 24, "png": 6}
LOADTEST_DIR = WORK_DIR / "loadtests"  # generated images and locust reports (git-ignored)
# Locust profiles: users, spawn rate, run time (s), think time (ms, uniform 0..max), SLO bounds per
# endpoint (ms; failure ratio must be 0). The short profile runs in the test suite on a shared 2-core
# machine, so its bounds are loose enough for a busy CI box yet still catch a stuck or queueing server.
LOADTEST_PROFILES: dict[str, dict] = {
    "short": {"users": 6, "spawn_rate": 6, "run_time": 20, "think_ms": 100, "p95_ms": 2500, "p99_ms": 5000},
    # soak: steady moderate load (~0.5 core here) for 10 minutes; RSS may grow <= 10% after the first 30 s
    "soak": {"users": 8, "spawn_rate": 4, "run_time": 600, "think_ms": 250, "p95_ms": 1500, "p99_ms": 3000,
             "max_rss_growth": 0.10},
}
