"""A stand-in KWS model for plumbing tests that must not hinge on a model's accuracy.

It has the shipped model's interface (float (1, W, 40) log-mel in, one posterior out) and runs in
the same interpreter, but it only measures loudness: posterior = sigmoid(a * (mean log-mel - b)).
So it fires on any loud enough sound in a quiet room; tests that use it say so. Regenerate with
``python tests/kws_standin.py`` (needs TensorFlow).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gate.kws.stage import default_model_path

STANDIN = Path(__file__).parent / "data" / "kws_standin.tflite"
WINDOW_FRAMES = 50  # 0.5 s of 10 ms frames
GAIN, LEVEL = 3.0, -5.0  # a log-mel mean of -5 is about speech at -30 dBFS; a -60 dBFS room sits near -8


def shipped_kws_model() -> Path:
    """The committed log-mel model; a test that needs it fails, naming it, if it is gone."""
    path = default_model_path("logmel")
    assert path.is_file(), f"committed model missing: {path}"
    return path


def build(path: Path = STANDIN) -> Path:
    import keras
    import tensorflow as tf
    from keras import layers

    inp = keras.Input((WINDOW_FRAMES, 40), name="features")
    pooled = layers.GlobalAveragePooling1D()(inp)
    out = layers.Dense(1, activation="sigmoid", name="posterior")(pooled)
    model = keras.Model(inp, out)
    model.get_layer("posterior").set_weights([np.full((40, 1), GAIN / 40, np.float32),
                                              np.array([-GAIN * LEVEL], np.float32)])
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


if __name__ == "__main__":
    print(build())
