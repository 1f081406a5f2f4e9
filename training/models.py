"""The paper's model ladder and its Keras Tuner search space (backend-neutral Keras 3).

Every builder takes float32 images in [0, 1] of shape (size, size, 3) (the preprocessing contract
rescales before the model) and returns a compiled binary classifier whose single sigmoid output is
P(glasses). The builders follow Ghezzi & Limoncini layer by layer:

    perceptron       Reshape -> Dense(1, sigmoid)                                   (paper: 0.87 acc)
    first CNN        Conv(16,3,relu) MaxPool Conv(32,3,stride 2,relu) MaxPool Flatten Dense(128) Dense(1)
    dropout CNN      Conv(12) MaxPool Conv(24, stride 2) MaxPool Flatten Dense(128) Dropout(0.4) Dense(1)
    batch-norm CNN   [Conv(no bias) MaxPool BN(center, no scale) ReLU] x 12/24s2/64s2, Flatten,
                     Dense(200, no bias) BN ReLU, Dense(1); Adam(0.01), optional 0.01*0.6^epoch decay
    hypermodel       2-4 x [Conv(12|44, 3|5, same) Pool(max|avg) BN(center, no scale) ReLU], Flatten,
                     Dense(32..192 step 32, relu), Dense(1, sigmoid); Adam lr {1e-2, 1e-3, 1e-4}

Kernel sizes the paper leaves implicit in the ladder are 3 ("same" padding), pools are 2x2.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers, ops

from glasses.config import IMAGE_SIZE
from training.acceleration import compile_options

# The paper's best Hyperband model (3 conv layers 12/44/44, kernels 5/3/3, max pooling, dense 96).
PAPER_BEST_HYPERPARAMETERS: dict[str, object] = {
    "conv_layers": 3,
    "filters_0": 12, "kernel_size_0": 5, "pooling_0": "max",
    "filters_1": 44, "kernel_size_1": 3, "pooling_1": "max",
    "filters_2": 44, "kernel_size_2": 3, "pooling_2": "max",
    "units": 96,
    "learning_rate": 1e-3,
}
PAPER_BEST_PARAMS = 1_105_013


@keras.saving.register_keras_serializable(package="glasses")
class BalancedAccuracy(keras.metrics.Metric):
    """(recall of glasses + recall of no_glasses) / 2 at a fixed threshold; cheap, streaming."""

    def __init__(self, threshold: float = 0.5, name: str = "balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.counts = self.add_variable(shape=(4,), initializer="zeros", name="counts")  # tp fn tn fp

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        pred = ops.cast(ops.reshape(y_pred, (-1,)) >= self.threshold, "float32")
        pos, neg = y_true, 1.0 - y_true
        self.counts.assign_add(
            ops.stack([ops.sum(pos * pred), ops.sum(pos * (1 - pred)), ops.sum(neg * (1 - pred)), ops.sum(neg * pred)])
        )

    def result(self):
        tp, fn, tn, fp = self.counts[0], self.counts[1], self.counts[2], self.counts[3]
        tpr = ops.divide_no_nan(tp, tp + fn)
        tnr = ops.divide_no_nan(tn, tn + fp)
        return (tpr + tnr) / 2.0

    def reset_state(self):
        self.counts.assign(ops.zeros((4,)))

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


def training_metrics() -> list[keras.metrics.Metric]:
    """Metrics every model is compiled with; the tuner objective must be one of val_<name>."""
    return [
        keras.metrics.BinaryAccuracy(name="accuracy"),
        keras.metrics.AUC(name="auc"),
        BalancedAccuracy(name="balanced_accuracy"),
    ]


def compile_binary(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """Adam + binary cross-entropy + the standard metrics (what the paper compiles with)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=training_metrics(),
        **compile_options(),
    )
    return model


def _input(size: int) -> keras.Input:
    return keras.Input(shape=(size, size, 3), name="image")


def build_perceptron(size: int = IMAGE_SIZE) -> keras.Model:
    """Reshape -> Dense(1, sigmoid): logistic regression on raw pixels."""
    inputs = _input(size)
    x = layers.Reshape((size * size * 3,))(inputs)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32")(x)
    return compile_binary(keras.Model(inputs, outputs, name="perceptron"))


def _two_block_cnn(name: str, filters: tuple[int, int], dropout: float, size: int) -> keras.Model:
    """Conv(f1, 3) MaxPool Conv(f2, 3, stride 2) MaxPool Flatten Dense(128) [Dropout] Dense(1, sigmoid)."""
    inputs = _input(size)
    x = layers.Conv2D(filters[0], 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(filters[1], 3, strides=2, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32")(x)
    return compile_binary(keras.Model(inputs, outputs, name=name))


def build_first_cnn(size: int = IMAGE_SIZE) -> keras.Model:
    """The paper's first CNN: two conv/pool blocks (16/32 filters), Dense(128)."""
    return _two_block_cnn("first_cnn", (16, 32), 0.0, size)


def build_dropout_cnn(size: int = IMAGE_SIZE) -> keras.Model:
    """The first CNN made leaner (12/24 filters) with Dropout(0.4) before the output."""
    return _two_block_cnn("dropout_cnn", (12, 24), 0.4, size)


def _conv_pool_bn_relu(x, filters: int, kernel: int, *, strides: int = 1, pool: str = "max", use_bias: bool = True):
    """The paper's block: Conv2D(same) -> 2x2 max or avg pool -> BatchNorm(center, no scale) -> ReLU."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=use_bias)(x)
    x = (layers.MaxPooling2D if pool == "max" else layers.AveragePooling2D)(pool_size=2)(x)
    x = layers.BatchNormalization(center=True, scale=False)(x)
    return layers.Activation("relu")(x)


def build_batchnorm_cnn(size: int = IMAGE_SIZE) -> keras.Model:
    """Conv(no bias) -> MaxPool -> BatchNorm(center, no scale) -> ReLU, x3; Dense(200) BN ReLU; Adam(0.01).

    The optional LR decay 0.01 * 0.6**epoch is a callback: `lr_decay_callback()`.
    """
    inputs = _input(size)
    x = inputs
    for filters, strides in ((12, 1), (24, 2), (64, 2)):
        x = _conv_pool_bn_relu(x, filters, 3, strides=strides, use_bias=False)
    x = layers.Flatten()(x)
    x = layers.Dense(200, use_bias=False)(x)
    x = layers.BatchNormalization(center=True, scale=False)(x)
    x = layers.Activation("relu")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32")(x)
    return compile_binary(keras.Model(inputs, outputs, name="batchnorm_cnn"), learning_rate=0.01)


def lr_decay(epoch: int, lr: float | None = None) -> float:
    """The paper's learning-rate decay for the batch-norm CNN: 0.01 * 0.6**epoch."""
    return 0.01 * 0.6**epoch


def lr_decay_callback() -> keras.callbacks.Callback:
    """LearningRateScheduler applying `lr_decay`."""
    return keras.callbacks.LearningRateScheduler(lr_decay)


def build_paper_hypermodel(hp, size: int = IMAGE_SIZE, train_steps: int | None = None) -> keras.Model:
    """The paper's Hyperband search space (hp: keras_tuner.HyperParameters); constant learning rates."""
    inputs = _input(size)
    x = inputs
    for i in range(hp.Int("conv_layers", 2, 4)):
        x = _conv_pool_bn_relu(x, hp.Int(f"filters_{i}", 12, 64, step=32),  # 12 or 44
                               hp.Choice(f"kernel_size_{i}", [3, 5]), pool=hp.Choice(f"pooling_{i}", ["max", "avg"]))
    x = layers.Flatten()(x)
    x = layers.Dense(hp.Int("units", 32, 200, step=32), activation="relu")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="hypermodel")
    return compile_binary(model, learning_rate=hp.Choice("learning_rate", [1e-2, 1e-3, 1e-4]))


LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R 601 luma, as PIL's convert("L") and tf.image.rgb_to_grayscale


def _paper_best_trunk(h, units: int):
    """The paper's best layers: 12/44/44 conv, kernels 5/3/3, max pool, BN(center, no scale), ReLU, Dense."""
    for filters, kernel in ((12, 5), (44, 3), (44, 3)):
        h = _conv_pool_bn_relu(h, filters, kernel)
    h = layers.Flatten()(h)
    return layers.Dense(units, activation="relu")(h)


def _gap_trunk(h, width: float):
    """All-convolutional: Conv(24, 5, stride 2), then 48/96/192/384 3x3 convs between 2x2 max pools,
    each conv without bias -> BN(center, no scale) -> ReLU; global average pooling. No flatten-dense
    layer: the head sees "how glasses-like" the face is wherever it sits, which keeps tighter and
    looser crops close."""
    for i, filters in enumerate((24, 48, 96, 192, 384)):
        if i:
            h = layers.MaxPooling2D(pool_size=2)(h)
        h = layers.Conv2D(round(filters * width), 5 if i == 0 else 3, strides=2 if i == 0 else 1,
                          padding="same", use_bias=False)(h)
        h = layers.BatchNormalization(center=True, scale=False)(h)
        h = layers.Activation("relu")(h)
    return layers.GlobalAveragePooling2D()(h)


def build_celeba_hypermodel(hp, size: int = IMAGE_SIZE, train_steps: int | None = None) -> keras.Model:
    """The model for real photos: the paper's best layers, made robust by construction.

    luma (a frozen 1x1 conv with LUMA_WEIGHTS, so a grayscale upload gives the same input as the
    colour photo) -> trunk -> Dense(1, sigmoid), where the trunk sees the image and its mirror image
    (shared weights) and the two probabilities are averaged, so a horizontally flipped upload gets
    exactly the same answer (and every prediction is a two-view ensemble). Trunk "gap" (`_gap_trunk`,
    884,500 parameters), or "paper_best" (`_paper_best_trunk`, Dense(96): 1,104,416 parameters; the
    runner-up in the experiments). Adam(2e-3) with cosine decay to 2 % over the whole fit (`train_steps`).

    Every value is Fixed: the recipe was chosen by the experiments in models/README.md, and the
    `celeba` profile spends its 2-core budget on one long fit instead of a search.
    """
    return _luma_flip_model(
        size, luma=hp.Fixed("input", "luma") == "luma", trunk=hp.Fixed("trunk", "gap"), width=hp.Fixed("width", 1.0),
        units=hp.Fixed("units", 96) if hp.values.get("trunk") == "paper_best" else 96, standardize=False,
        learning_rate=hp.Fixed("learning_rate", 2e-3),
        decay_steps=_decay_steps(hp, train_steps), name="celeba")


def _decay_steps(hp, train_steps: int | None) -> int:
    """Cosine-decay length: the fit's optimizer steps (epochs x batches of the train split, from the
    data), or the value a stored set of hyperparameters already holds."""
    steps = train_steps if train_steps is not None else hp.values.get("decay_steps")
    if steps is None:
        raise ValueError("this search space needs train_steps (optimizer steps of the fit) for its schedule")
    return hp.Fixed("decay_steps", int(steps))


def standardize_per_image(x):
    """(x - mean) / (std + 0.02) over each image: a darker or brighter exposure of a photo (a gain on
    its pixels) gives the network (almost) the same input; only clipped highlights still differ."""
    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2, 3), keepdims=True))
    return (x - mean) / (std + 0.02)


def _luma_flip_model(size: int, *, luma: bool, trunk: str, width: float, units: int, standardize: bool,
                     learning_rate: float, decay_steps: int, name: str) -> keras.Model:
    """[luma] -> [per-image standardisation] -> mean(trunk(x), trunk(mirror(x))), compiled (cosine Adam)."""
    inputs = _input(size)
    channels = 3
    x = inputs
    if luma:
        x = layers.Conv2D(1, 1, use_bias=False, trainable=False, name="luma",
                          kernel_initializer=keras.initializers.Constant([[[[w] for w in LUMA_WEIGHTS]]]))(x)
        channels = 1
    if standardize:
        x = standardize_per_image(x)
    trunk_in = keras.Input(shape=(size, size, channels), name="trunk_in")
    h = _gap_trunk(trunk_in, width) if trunk == "gap" else _paper_best_trunk(trunk_in, units)
    trunk_model = keras.Model(trunk_in, layers.Dense(1, activation="sigmoid", dtype="float32")(h), name="trunk")
    outputs = layers.Average(name="flip_average", dtype="float32")([trunk_model(x), trunk_model(ops.flip(x, axis=2))])
    model = keras.Model(inputs, outputs, name=name)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=decay_steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss="binary_crossentropy",
                  metrics=training_metrics(), **compile_options())
    return model


def build_robust_hypermodel(hp, size: int = IMAGE_SIZE, train_steps: int | None = None) -> keras.Model:
    """The `robust` profile's model: the celeba model (luma, GAP trunk, flip average) with per-image
    standardisation after the luma layer, the cosine schedule spanning the whole fit (every value Fixed; the recipe and the measurements behind it: models/README.md)."""
    return _luma_flip_model(
        size, luma=True, trunk="gap", width=hp.Fixed("width", 1.0), units=96,
        standardize=hp.Fixed("standardize", True), learning_rate=hp.Fixed("learning_rate", 2e-3),
        decay_steps=_decay_steps(hp, train_steps), name="robust")


# Search spaces a tuning profile can name with `search_space`; add new hypermodels here.
SEARCH_SPACES: dict[str, Callable] = {
    "paper": build_paper_hypermodel,
    "celeba": build_celeba_hypermodel,
    "robust": build_robust_hypermodel,
}

# The ladder, in the paper's order: name -> (builder, uses LR decay).
LADDER: dict[str, tuple[Callable[[int], keras.Model], bool]] = {
    "perceptron": (build_perceptron, False),
    "first_cnn": (build_first_cnn, False),
    "dropout_cnn": (build_dropout_cnn, False),
    "batchnorm_cnn": (build_batchnorm_cnn, False),
    "batchnorm_cnn_lr_decay": (build_batchnorm_cnn, True),
}


def hypermodel_for(search_space: str, size: int = IMAGE_SIZE, train_steps: int | None = None) -> Callable:
    """The `build(hp)` function for a named search space at a given image size; `train_steps` (optimizer
    steps of the whole fit) sizes learning-rate schedules."""
    try:
        builder = SEARCH_SPACES[search_space]
    except KeyError:
        raise ValueError(f"unknown search space {search_space!r}; known: {', '.join(SEARCH_SPACES)}") from None

    def build(hp):
        return builder(hp, size=size, train_steps=train_steps)

    return build


def build_from_hyperparameters(values: dict, search_space: str = "paper", size: int = IMAGE_SIZE) -> keras.Model:
    """Rebuild (untrained) the model a set of hyperparameter values describes."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for name, value in values.items():
        if not name.startswith("tuner/"):
            hp.values[name] = value
    return hypermodel_for(search_space, size)(hp)


def fixed_point(search_space: str, size: int = IMAGE_SIZE, train_steps: int | None = None) -> dict | None:
    """The hyperparameter values of a search space whose every value is Fixed (one point: nothing to
    search, so `tune` fits it once instead of spending a trial on it), else None."""
    import keras_tuner as kt
    from keras_tuner.engine.hyperparameters import Fixed

    hp = kt.HyperParameters()
    hypermodel_for(search_space, size, train_steps)(hp)
    return dict(hp.values) if all(isinstance(h, Fixed) for h in hp.space) else None
