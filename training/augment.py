"""Augment: random, label-preserving changes to training images (the paper's "future work").

A tuning profile names one function of this module with `augment` (glasses.config.TUNING_PROFILES);
`training.data.make_dataset(augment=fn)` maps it over the *train* split only, per example, after
rescaling and before batching:

    fn(image float32 (S, S, 3) in [0, 1], label) -> (image float32 (S, S, 3) in [0, 1], label)

`celeba` makes a model trained on aligned CelebA photos hold its verdict on what users really upload
(each step answers one of issue 7's behavioural checks):

    JPEG re-encoding, quality 60-100        phone JPEGs, PNG vs JPEG q95, 2x size
    horizontal flip                         flipped faces
    zoom -30 % (tighter) .. +15 % (looser)  centre crop to 80 % of the frame, looser crops
    shift +-6 %, rotation +-14 degrees      imperfect alignment
    brightness +-10 %, contrast +-15 %      exposure
    grayscale with probability 0.3         black-and-white photos (a no-op for the `celeba` model,
                                            whose first layer keeps luma only, but not for RGB ones)

Keras preprocessing layers and `tf.image` ops only (TensorFlow backend, as tf.data runs them).
Validation and test images are never augmented.
"""

from __future__ import annotations

from typing import Any

# The `celeba` recipe (see models/README.md and issue 7 for how it was chosen).
CELEBA_AUGMENTATION: dict[str, Any] = {
    "jpeg_quality": (60, 100),  # tf.image.random_jpeg_quality bounds
    "flip": "horizontal",
    "zoom": (-0.3, 0.15),  # keras RandomZoom height/width factor: negative = zoom in (tighter crop)
    "translation": 0.06,  # fraction of height/width
    "rotation": 0.04,  # fraction of a full turn (0.04 * 360 = 14.4 degrees)
    "brightness": 0.1,  # fraction of the value range [0, 1]
    "contrast": 0.15,
    "grayscale_p": 0.3,
    "fill_mode": "reflect",  # how zoom-out / shift / rotation fill the new border
}

_layers_cache: dict[str, Any] = {}


def _geometric_and_photometric(params: dict[str, Any]):
    """One keras.Sequential of the random layers (built once per process, reused by every call)."""
    key = repr(sorted(params.items()))
    if key not in _layers_cache:
        from keras import Sequential, layers

        fill = params["fill_mode"]
        _layers_cache[key] = Sequential(
            [
                layers.RandomFlip(params["flip"]),
                layers.RandomRotation(params["rotation"], fill_mode=fill),
                layers.RandomZoom(params["zoom"], fill_mode=fill),
                layers.RandomTranslation(params["translation"], params["translation"], fill_mode=fill),
                layers.RandomBrightness(params["brightness"], value_range=(0.0, 1.0)),
                layers.RandomContrast(params["contrast"], value_range=(0.0, 1.0)),
            ],
            name="augment",
        )
    return _layers_cache[key]


def random_grayscale(image, p: float):
    """With probability p, replace the RGB image by its luma (ITU-R 601, as PIL's convert("L")) x 3."""
    import tensorflow as tf

    gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
    return tf.where(tf.random.uniform([]) < p, gray, image)


def augment_image(image, params: dict[str, Any] = CELEBA_AUGMENTATION):
    """One float32 image (S, S, 3) in [0, 1] -> a randomly augmented one, same shape, range [0, 1]."""
    import tensorflow as tf

    image = tf.convert_to_tensor(image, tf.float32)
    lo, hi = params["jpeg_quality"]
    image = tf.image.random_jpeg_quality(image, lo, hi)  # encodes/decodes as uint8 in between
    image = _geometric_and_photometric(params)(image, training=True)
    image = random_grayscale(image, params["grayscale_p"])
    return tf.clip_by_value(image, 0.0, 1.0)


def celeba(image, label):
    """The `celeba` profile's augmentation: `augment_image` with CELEBA_AUGMENTATION; label unchanged."""
    return augment_image(image, CELEBA_AUGMENTATION), label

