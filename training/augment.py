"""Augment: random, label-preserving changes to training images (the paper's "future work").

A tuning profile names one function of this module with `augment` (glasses.config.TUNING_PROFILES);
`training.data.make_dataset(augment=fn)` maps it over the *train* split only, per example, after
rescaling and before batching:

    fn(image float32 (S, S, 3) in [0, 1], label) -> (image float32 (S, S, 3) in [0, 1], label)

`celeba` makes a model trained on aligned CelebA photos hold its verdict on what users really upload
(each step answers one of the behavioural checks in tests/test_behaviour.py):

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

# The `celeba` recipe (models/README.md says how it was chosen).
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


# --- the `robust` recipe: the framings and conditions of training/robustness.py -----------------
# Ranges are wider than the evaluated conditions (models/README.md): the model must hold its verdict
# at the edges, not only in the middle of them.
ROBUST_AUGMENTATION: dict[str, Any] = {
    "near_p": 0.4,  # share of images kept near the original framing (zoom 0.9-1.1)
    "zoom": (0.6, 2.6),  # visible frame / original frame: < 1 tighter crop, > 1 face smaller in the frame
    "near_zoom": (0.9, 1.1),
    "shift": 0.08,  # translation, fraction of the frame (plus up to 80 % of the free room when zoomed out)
    "rotation": 25.0,  # degrees, uniform +-
    "lowres_p": 0.35, "lowres": (32, 110),  # down to N px (area), back up (bilinear)
    "blur_p": 0.3, "blur_sigma": (0.4, 2.2),  # Gaussian, pixels of the 128 px frame
    "exposure_p": 0.6, "gain": (0.3, 2.2), "near_gain": (0.85, 1.15),  # multiplicative, log-uniform
    "gamma": (0.7, 1.4), "contrast": (0.7, 1.3),
    "jpeg_p": 0.6, "jpeg_quality": (15, 95),
}
BLUR_TAPS = 9


def _uniform(lo, hi, shape=()):
    import tensorflow as tf

    return tf.random.uniform(shape, lo, hi)


def _log_uniform(lo: float, hi: float):
    import math

    import tensorflow as tf

    return tf.exp(tf.random.uniform([], math.log(lo), math.log(hi)))


def _background(size: int):
    """A smooth random colour field with fine noise: what a zoomed-out or rotated frame shows around the photo."""
    import tensorflow as tf

    coarse = tf.random.uniform([1, 4, 4, 3], 0.05, 0.95)
    field = tf.image.resize(coarse, [size, size], method="bilinear")[0]
    return tf.clip_by_value(field + tf.random.normal([size, size, 3], stddev=0.04), 0.0, 1.0)


def reframe(image, params: dict[str, Any] = ROBUST_AUGMENTATION):
    """One affine warp: zoom (tight crop .. face small in the frame), off-centre shift, rotation;
    what falls outside the photo is a random background."""
    import math

    import tensorflow as tf

    size = int(image.shape[0])
    zoom = tf.where(tf.random.uniform([]) < params["near_p"], _uniform(*params["near_zoom"]), _log_uniform(*params["zoom"]))
    theta = _uniform(-params["rotation"], params["rotation"]) * (math.pi / 180.0)
    room = tf.maximum(zoom - 1.0, 0.0) * 0.5 * 0.8 + params["shift"]
    tx, ty = [_uniform(-1.0, 1.0) * room * size for _ in range(2)]
    c = (size - 1) / 2.0
    a0, a1 = zoom * tf.cos(theta), -zoom * tf.sin(theta)
    b0, b1 = zoom * tf.sin(theta), zoom * tf.cos(theta)
    transform = tf.stack([a0, a1, c - a0 * c - a1 * c + tx, b0, b1, c - b0 * c - b1 * c + ty, 0.0, 0.0])
    rgba = tf.concat([image, tf.ones_like(image[..., :1])], axis=-1)[tf.newaxis]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=rgba, transforms=transform[tf.newaxis], output_shape=[size, size], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    alpha = warped[..., 3:]
    return warped[..., :3] + (1.0 - alpha) * _background(size)


def gaussian_blur(image, sigma):
    """Separable Gaussian blur of one (S, S, 3) image, reflected borders."""
    import tensorflow as tf

    r = BLUR_TAPS // 2
    x = tf.range(-r, r + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * (x / sigma) ** 2)
    k = k / tf.reduce_sum(k)
    padded = tf.pad(image[tf.newaxis], [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    h = tf.nn.depthwise_conv2d(padded, tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")
    v = tf.nn.depthwise_conv2d(h, tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")
    return v[0]


def _maybe(p: float, fn, image):
    import tensorflow as tf

    return tf.cond(tf.random.uniform([]) < p, lambda: fn(image), lambda: image)


def degrade(image, params: dict[str, Any] = ROBUST_AUGMENTATION):
    """Camera and upload losses: low resolution, blur, exposure / gamma / contrast, JPEG quality."""
    import tensorflow as tf

    size = int(image.shape[0])

    def lowres(x):
        side = tf.random.uniform([], params["lowres"][0], params["lowres"][1] + 1, dtype=tf.int32)
        small = tf.image.resize(x[tf.newaxis], [side, side], method="area")
        return tf.image.resize(small, [size, size], method="bilinear")[0]

    def exposure(x):
        x = tf.pow(tf.maximum(x, 1e-6), _log_uniform(*params["gamma"]))
        x = x * _log_uniform(*params["gain"])
        mean = tf.reduce_mean(x)
        return (x - mean) * _uniform(*params["contrast"]) + mean

    image = _maybe(params["lowres_p"], lowres, image)
    image = _maybe(params["blur_p"], lambda x: gaussian_blur(x, _uniform(*params["blur_sigma"])), image)
    image = tf.cond(tf.random.uniform([]) < params["exposure_p"], lambda: exposure(image),
                    lambda: image * _uniform(*params["near_gain"]))
    image = tf.clip_by_value(image, 0.0, 1.0)
    lo, hi = params["jpeg_quality"]
    return _maybe(params["jpeg_p"], lambda x: tf.image.random_jpeg_quality(x, lo, hi), image)


def robust(image, label):
    """The `robust` profile's augmentation: reframe, then degrade (ROBUST_AUGMENTATION); label unchanged.
    No flip or grayscale step: the `robust` model is flip-averaged and sees luma only."""
    import tensorflow as tf

    image = tf.convert_to_tensor(image, tf.float32)
    image = tf.clip_by_value(reframe(image), 0.0, 1.0)
    return tf.clip_by_value(degrade(image), 0.0, 1.0), label


# --- the `framed` recipe: photos already cropped around their faces ------------------------------
# The detector puts every face at one scale and place, give or take its jitter, so the warp keeps to
# that jitter; the camera and upload losses stay as in `robust`.
FRAMED_AUGMENTATION: dict[str, Any] = ROBUST_AUGMENTATION | {
    "near_p": 0.5, "zoom": (0.8, 1.3), "near_zoom": (0.95, 1.05), "shift": 0.05,
}


def framed(image, label):
    """The `framed` profile's augmentation: reframe within the detector's jitter, then degrade."""
    import tensorflow as tf

    image = tf.convert_to_tensor(image, tf.float32)
    image = tf.clip_by_value(reframe(image, FRAMED_AUGMENTATION), 0.0, 1.0)
    return tf.clip_by_value(degrade(image, FRAMED_AUGMENTATION), 0.0, 1.0), label
