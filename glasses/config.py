"""Configuration in one place: names, paths, defaults and profiles shared by training and serving.

The label convention is stated here, once, and everything else imports it:
    label 1 = "glasses"    = the person in the image wears glasses (sunglasses count for CelebA data);
    label 0 = "no_glasses" = they do not.
Models output P(glasses) from a sigmoid. (The paper's `image_dataset_from_directory` ordering made
glasses = 0; we deliberately do not inherit that inversion.)
"""

from __future__ import annotations

import os
from pathlib import Path

# --- labels -------------------------------------------------------------------------------------
CLASS_NAMES: tuple[str, str] = ("no_glasses", "glasses")  # index = label
POSITIVE_CLASS = "glasses"
CLASS_MAP: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
FOLDER_ALIASES: dict[str, str] = {"glasses": "glasses", "no_glasses": "no_glasses", "no-glasses": "no_glasses"}

# --- images -------------------------------------------------------------------------------------
IMAGE_SIZE = 128  # the paper's choice
ALLOWED_SIZES: tuple[int, ...] = (64, 128, 256)
MAX_IMAGE_PIXELS = 50_000_000  # decompression-bomb guard (a 48 MP phone photo still fits)

# --- paths --------------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parent.parent
EXCLUDED_IDS_FILE = Path(__file__).resolve().parent / "data" / "excluded-kaggle-ids.txt"
WORK_DIR = Path(os.environ.get("GLASSES_WORK_DIR", REPO_ROOT / "artifacts"))  # caches, tuner dirs, reports
BUNDLED_MODEL_FILE = REPO_ROOT / "models" / "glasses_classifier.bentomodel"

# --- registry -----------------------------------------------------------------------------------
MODEL_NAME = "glasses_classifier"
MODEL_ENV_VAR = "GLASSES_MODEL"  # a tag such as glasses_classifier:abc123 overrides the promoted one
DEFAULT_THRESHOLD = 0.5

# --- Kaggle -------------------------------------------------------------------------------------
KAGGLE_DATASET = "jeffheaton/glasses-or-no-glasses"
KAGGLE_IMAGE_DIR = "faces-spring-2020/faces-spring-2020"

# --- data pipeline ------------------------------------------------------------------------------
SEED = 1234
SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test
BATCH_SIZE = 64
SHUFFLE_BUFFER = 2000

# --- prepare (training/prepare.py) --------------------------------------------------------------
CACHE_SUBDIR = "cache"  # WORK_DIR/cache/<kind>-<size>-<fingerprint[:16]>/
CSV_BLOCKSIZE = "16MB"  # dask.dataframe.read_csv partition size (CSV may exceed memory)
DECODE_CHUNK = 32  # images per dask task (upper bound; small sources get smaller chunks)
PREPARE_SCHEDULER = "threads"  # local dask scheduler; measured faster than processes here (benchmarks/)
LABELS_CSV = "labels.csv"  # optional file in a folders: source
LABELS_FILE_COLUMN = "file"  # path relative to the folders: root, e.g. glasses/000123.jpg
GROUP_COLUMNS: tuple[str, ...] = ("celeba_identity", "identity", "person", "group")  # first present wins
KAGGLE_HOST = "www.kaggle.com"
KAGGLE_TIMEOUT = 10.0  # seconds to wait for Kaggle to answer before giving up

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
    "soak": {"users": 12, "spawn_rate": 4, "run_time": 600, "think_ms": 100, "p95_ms": 1500, "p99_ms": 3000,
             "max_rss_growth": 0.25},
}
