"""Training loop, TFLite export and clip-level accuracy: the parts that touch TensorFlow."""

from __future__ import annotations

import logging
import os

import numpy as np
from tqdm import tqdm

from cloud.train import dataset
from cloud.train.models import build

log = logging.getLogger(__name__)


def setup_tf(seed: int, threads: int) -> None:
    """Deterministic ops and bounded threads (the machine is shared)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already ran in this process (e.g. under pytest); its thread pools are fixed now
    reseed(seed)
    tf.config.experimental.enable_op_determinism()


def reseed(value: int) -> None:
    """Python's, numpy's and the backend's generators (setup_tf at the start of a run; per model too)."""
    import keras

    keras.utils.set_random_seed(int(value))


class _Bar:
    """A tqdm bar over epochs showing the latest metrics (keras' own printing stays off)."""

    @staticmethod
    def make(epochs: int, desc: str):
        import keras

        class Cb(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=False)

            def on_epoch_end(self, epoch, logs=None):
                self.bar.set_postfix({k: f"{v:.3f}" for k, v in (logs or {}).items()})
                self.bar.update(1)

            def on_train_end(self, logs=None):
                self.bar.close()

        return Cb()


def train(model, x: np.ndarray, y: np.ndarray, *, epochs: int, batch: int, lr: float, seed: int,
          x_val: np.ndarray, y_val: np.ndarray, desc: str, callbacks: list | None = None) -> dict:
    """Adam with cosine decay; binary (one sigmoid, soft targets allowed) or sparse categorical loss."""
    import keras

    steps = epochs * int(np.ceil(len(x) / batch))
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.02))
    binary = model.output.shape[-1] == 1
    if binary:
        model.compile(opt, loss=keras.losses.BinaryCrossentropy(), metrics=[keras.metrics.BinaryAccuracy("acc")])
    else:
        model.compile(opt, loss="sparse_categorical_crossentropy",
                      metrics=[keras.metrics.SparseCategoricalAccuracy("acc")])
    hist = model.fit(x, y.astype(np.float32) if binary else y, batch_size=batch, epochs=epochs, shuffle=True,
                     validation_data=(x_val, y_val.astype(np.float32) if binary else y_val), verbose=0,
                     callbacks=[_Bar.make(epochs, desc), *(callbacks or [])])
    return {k: [float(v) for v in vs] for k, vs in hist.history.items()}


def fit_binary(spec, name: str, dim: int, x_tr, y_tr, x_val, y_val, recipe, mine_streams):
    """Train a binary model (verifier v1, a tiny model) on clips and stream windows; then add the
    negatives it gets most wrong on fresh streams and fine-tune (hard-negative mining). Returns the
    model, its history and the mined windows."""
    mean, std = stats(x_tr)
    model = build(spec, dim=dim, n_out=1, mean=mean, std=std, name=name)
    hist = train(model, x_tr, y_tr, epochs=spec.epochs, batch=spec.batch, lr=spec.lr, seed=recipe.seed,
                 x_val=x_val, y_val=np.asarray(y_val, np.float32), desc=name)
    ss = recipe.streams
    if not mine_streams or ss.mine_epochs == 0 or ss.mine_limit == 0:
        return model, hist, np.zeros((0, *x_tr.shape[1:]), np.float32)
    hard = dataset.mine(lambda w: predict(model, w), mine_streams, spec.window_frames, stride=3,
                        threshold=ss.mine_threshold, limit=ss.mine_limit)
    log.info("%s: %d hard negatives mined", name, len(hard))
    if len(hard):
        hist = train(model, np.concatenate([x_tr, hard]), np.concatenate([y_tr, np.zeros(len(hard), np.float32)]),
                     epochs=ss.mine_epochs, batch=spec.batch, lr=spec.lr / 3, seed=recipe.seed, x_val=x_val,
                     y_val=np.asarray(y_val, np.float32), desc=f"{name} +mined")
    return model, hist, hard


def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of windows ``x`` (the models' input normalisation)."""
    flat = x.reshape(-1, x.shape[-1])
    return flat.mean(axis=0), flat.std(axis=0) + 1e-3


def last(hist: dict) -> dict:
    """A training history's last value of every metric, for the cards."""
    return {k: round(v[-1], 4) for k, v in hist.items()}


def prune(model, *, sparsity: float, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float,
          seed: int, x_val: np.ndarray, y_val: np.ndarray, desc: str):
    """Magnitude pruning: a copy of ``model`` with the smallest ``sparsity`` of every convolution and
    dense kernel set to zero, fine-tuned for ``epochs`` with those zeros held. Returns the copy and
    the share of kernel weights that are zero (the original model is untouched)."""
    import keras

    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    masks = []
    for layer in pruned.layers:
        kernel = getattr(layer, "kernel", None)  # convolutions (depthwise too) and dense layers have one
        if kernel is None:
            continue
        w = np.asarray(kernel.numpy())
        mask = (np.abs(w) > np.quantile(np.abs(w), sparsity)).astype(w.dtype)
        kernel.assign(w * mask)
        masks.append((kernel, keras.ops.convert_to_tensor(mask)))

    class Hold(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for k, m in masks:
                k.assign(k * m)

    if epochs:
        train(pruned, x, y, epochs=epochs, batch=batch, lr=lr, seed=seed, x_val=x_val, y_val=y_val, desc=desc,
              callbacks=[Hold()])
    zeros = sum(int(np.sum(np.asarray(k.numpy()) == 0)) for k, _ in masks)
    total = sum(int(np.prod(k.shape)) for k, _ in masks)
    return pruned, zeros / max(1, total)


def predict(model, x: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=batch, verbose=0), np.float32)


def to_tflite(model, *, int8: bool, representative: np.ndarray | None = None) -> bytes:
    """Float32 or full-integer (int8 in, int8 out) TFLite; the representative set calibrates every tensor."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        if representative is None or not len(representative):
            raise ValueError("int8 export needs a representative dataset")
        rep = representative.astype(np.float32)

        def gen():
            for i in range(len(rep)):
                yield [rep[i:i + 1]]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return strip_names(conv.convert())


def strip_names(content: bytes) -> bytes:
    """Drop tensor names and conversion metadata: kilobytes an MCU's flash should not carry."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite_predict(content: bytes, x: np.ndarray) -> np.ndarray:
    from gate.kws.interpreter import TFLiteModel

    m = TFLiteModel(model_content=content)
    return m.run_batch(x)


def binary_accuracy(p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(p).reshape(-1) >= threshold) == (np.asarray(y).reshape(-1) >= 0.5)))


def balanced_accuracy(p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of the hit rate on positives and the rejection rate on negatives: chance is 0.5 at any class balance."""
    hit = np.asarray(p).reshape(-1) >= threshold
    pos = np.asarray(y).reshape(-1) >= 0.5
    rates = [float(np.mean(hit[pos])) if pos.any() else 1.0, float(np.mean(~hit[~pos])) if (~pos).any() else 1.0]
    return float(np.mean(rates))


def class_accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(p, axis=-1) == y))
