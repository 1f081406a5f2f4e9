"""Train: a plain fit of one model of the paper's ladder (no search), as `experiments` needs.

    manifest + ladder name -> model (training/models.py LADDER) -> fit(train, validation, epochs)
      [+ LearningRateScheduler 0.01 * 0.6**epoch for batchnorm_cnn_lr_decay], under this machine's
      acceleration plan (training/acceleration.py) -> (float32 model, history, wall time)
"""

from __future__ import annotations

import time
from pathlib import Path

from glasses.config import BATCH_SIZE, SEED
from training import acceleration
from training.cli import UserError


def fit_ladder_model(
    name: str,
    manifest_path: str | Path,
    *,
    epochs: int,
    batch_size: int = BATCH_SIZE,
    seed: int = SEED,
    class_weight: str | None = None,
    augment: str | None = None,
    verbose: int | None = None,
):
    """Build ladder model `name` for the manifest's image size and fit it; returns (model, history, seconds)."""
    import keras

    from training import models
    from training.data import make_dataset, read_manifest
    from training.fitting import class_weights, fit_verbosity, history_lists, resolve_augment

    if name not in models.LADDER:
        raise UserError(f"unknown ladder model {name!r}; known: {', '.join(models.LADDER)}")
    builder, decay = models.LADDER[name]
    size = int(read_manifest(manifest_path)["size"])
    plan = acceleration.make_plan()
    acceleration.set_threads(plan.intra_threads, plan.inter_threads)
    with acceleration.accelerated(plan):
        keras.utils.set_random_seed(seed)
        model = builder(size)
        train_ds = make_dataset(manifest_path, "train", batch_size=batch_size, seed=seed,
                                augment=resolve_augment(augment))
        val_ds = make_dataset(manifest_path, "val", batch_size=batch_size, shuffle=False)
        callbacks = [models.lr_decay_callback()] if decay else []
        started = time.monotonic()
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                            class_weight=class_weights(Path(manifest_path), class_weight),
                            verbose=fit_verbosity() if verbose is None else verbose)
        seconds = time.monotonic() - started
    return acceleration.float32_copy(model), history_lists(history), seconds

