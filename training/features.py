"""Features: a trained classifier's penultimate-layer activations, as inputs for light classifiers.

    model file (.bentomodel archive, .keras file, or a registry tag)
      -> the layer feeding the final Dense(1, sigmoid) (for the celeba/robust models: the trunk's global
         average pooling), computed through the model's own graph up to the trunk (luma conv,
         per-image standardisation) and averaged over the photo and its mirror image
      -> float32 (N, D) features of uint8 images, batch by batch (x / 255 as everywhere else)

TensorFlow / Keras are imported inside the functions, so a CLI can check its arguments first.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import numpy as np

from glasses.config import MODEL_FILE
from glasses.files import UserError

FEATURE_BATCH = 128


def load_classifier(model: str | Path):
    """A Keras model from a `.bentomodel` archive, a `.keras` file or a registry tag (name:version)."""
    import keras

    path = Path(model)
    if path.suffix == ".bentomodel" or path.suffix == ".keras":
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        if path.suffix == ".keras":
            return keras.saving.load_model(path, compile=False)
        with tempfile.TemporaryDirectory(prefix="glasses-model-") as tmp:
            try:
                with tarfile.open(path) as tar:
                    tar.extract("./model.keras", tmp, filter="data")
            except (tarfile.TarError, KeyError, OSError) as exc:
                raise UserError(f"{path} is not a readable .bentomodel archive with model.keras: {exc}") from None
            return keras.saving.load_model(Path(tmp) / MODEL_FILE, compile=False)
    from glasses import registry

    return keras.saving.load_model(registry.get_model(str(model)).path_of(MODEL_FILE), compile=False)


def _penultimate(model):
    """(network, layer): the innermost functional network holding the final Dense and the layer feeding it."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    network = nested[-1] if nested else model
    dense = network.layers[-1]
    if not isinstance(dense, keras.layers.Dense) or dense.units != 1:
        raise UserError(f"model {model.name!r}: its last layer is not Dense(1) ({type(dense).__name__}); "
                        "cannot find the penultimate layer")
    return network, dense.input._keras_history[0]


def _trunk_inputs(model, network) -> list:
    """The outer graph's tensors that `network` is called on (for the celeba/robust models: the
    preprocessed photo and its mirror image, after the luma conv and any per-image standardisation)."""
    return [node.input_tensors[0] for node in network._inbound_nodes if node.input_tensors]


def feature_extractor(model):
    """A function uint8 images (N, S, S, 3) -> float32 (N, D): penultimate features, mirror-averaged.

    A model whose trunk is a nested network gets its features through the model's own graph up to the
    trunk (every layer and op before it, e.g. per-image standardisation), averaged over the trunk's
    calls (photo and mirror); a plain model is run on the photo and its mirror image."""
    import keras
    import tensorflow as tf

    network, layer = _penultimate(model)
    head = keras.Model(network.inputs, layer.output)
    if network is model:
        stem, mirror = None, True
    else:
        inputs = _trunk_inputs(model, network)
        stem = keras.Model(model.inputs, inputs)
        mirror = len(inputs) < 2  # a trunk called once: mirror it here

    def features(x):
        parts = stem(x, training=False) if stem is not None else [x]
        parts = parts if isinstance(parts, (list, tuple)) else [parts]
        return tf.add_n([head(part, training=False) for part in parts]) / float(len(parts))

    @tf.function(reduce_retracing=True)
    def run(batch):
        x = tf.cast(batch, tf.float32) / 255.0
        return (features(x) + features(tf.reverse(x, axis=[2]))) / 2.0 if mirror else features(x)

    def extract(images: np.ndarray) -> np.ndarray:
        out = [run(tf.constant(images[i:i + FEATURE_BATCH])).numpy() for i in range(0, len(images), FEATURE_BATCH)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, layer.output.shape[-1]), np.float32)

    return extract
