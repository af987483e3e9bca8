"""The new int8 model: the base model's flatbuffer with its head's weights requantized.

The frozen layers, every activation's quantization and the graph stay as they were; the head's
weights are quantized as the converter quantizes them (symmetric int8, per output channel for the
convolution, per tensor for the classifier; int32 biases at input scale x weight scale). The float
head clips activations to the same ranges, so its predictions and the int8 model's agree.
"""

from __future__ import annotations

import numpy as np

from gate.fedhead import read_head


def _set(model, index: int, values: np.ndarray, scales: np.ndarray) -> None:
    t = model.subgraphs[0].tensors[index]
    buf = model.buffers[t.buffer]
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    if buf.data is None or len(buf.data) != raw.size:
        raise ValueError(f"tensor {index}: {raw.size} bytes for a buffer of {0 if buf.data is None else len(buf.data)}")
    buf.data = raw.copy()
    t.quantization.scale = np.asarray(scales, np.float32).reshape(-1).tolist()
    t.quantization.zeroPoint = [0] * len(t.quantization.scale)


def _sym(w: np.ndarray, axis_rows: bool) -> tuple[np.ndarray, np.ndarray]:
    amax = np.abs(w).max(axis=1) if axis_rows else np.array([np.abs(w).max()])
    s = np.maximum(amax, 1e-8) / 127.0
    q = np.clip(np.round(w / (s[:, None] if axis_rows else s[0])), -127, 127).astype(np.int8)
    return q, s.astype(np.float32)


def with_head(base: bytes, params: dict[str, np.ndarray]) -> bytes:
    """``base`` (an int8 tiny-model flatbuffer) with the head ``params`` requantized into it."""
    from tensorflow.lite.tools import flatbuffer_utils

    _, lay = read_head(base)
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(base))
    d_scale = float(lay.depthwise.scales[0])
    pooled_scale = float(lay.pooled.scales[0])
    w = np.asarray(params["pw_w"], np.float32)
    wq, ws = _sym(w, axis_rows=True)
    shape = model.subgraphs[0].tensors[lay.pw_w.index].shape
    _set(model, lay.pw_w.index, wq.reshape(tuple(shape)), ws)
    bs = ws * d_scale
    _set(model, lay.pw_b.index, np.round(np.asarray(params["pw_b"], np.float64) / bs).astype(np.int32), bs)
    v = np.asarray(params["fc_w"], np.float32).reshape(1, -1)
    vq, vs = _sym(v, axis_rows=False)
    _set(model, lay.fc_w.index, vq, vs)
    cs = vs * pooled_scale
    _set(model, lay.fc_b.index, np.round(np.asarray(params["fc_b"], np.float64) / cs).astype(np.int32), cs)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
