"""The part of the tiny model a node can fine-tune: its last block's pointwise convolution and the
classifier, in float, on top of the frozen int8 layers below (the feature extractor).

The shipped model keeps no float weights; the head is read from the int8 TFLite itself by
dequantizing (weights x per-channel scale, biases x input scale x weight scale). The graph ends

    R (block 4's input, the residual)      D (block 4's depthwise output, after ReLU)
        \\---------------- ADD <---------- 1x1 CONV (W, b) ----/
                            | ReLU
                          MEAN over time -> FULLY_CONNECTED (v, c) -> LOGISTIC

so ``R`` and ``D`` of every stored window are computed once by the int8 interpreter (the frozen part
as it runs on the node), and the head is a few thousand floats trained with numpy: no TensorFlow
on the node. The forward pass clips activations to the ranges the int8 graph quantizes them over,
so the float head predicts what the requantized model will do. Only ``trainable`` layers move.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYERS = {"pw+fc": ("pw_w", "pw_b", "fc_w", "fc_b"), "fc": ("fc_w", "fc_b")}


def _interpreter(model: bytes | str | Path, preserve: bool):
    from gate.kws.interpreter import find_interpreter

    _, cls = find_interpreter()
    kw = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors warns that it keeps intermediates: that is the point
        it = cls(**kw, experimental_preserve_all_tensors=preserve, num_threads=1)
    it.allocate_tensors()
    return it


@dataclass(frozen=True, slots=True)
class TensorInfo:
    index: int
    scales: np.ndarray
    zero_point: int

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, np.float32) - self.zero_point) * self.scales.astype(np.float32)

    @property
    def range(self) -> tuple[float, float]:
        s = float(self.scales[0])
        return (-128 - self.zero_point) * s, (127 - self.zero_point) * s


@dataclass(frozen=True)
class HeadLayout:
    """Where the head's tensors are in the graph (found by structure, not by name: names are stripped)."""

    residual: TensorInfo   # R
    depthwise: TensorInfo  # D (the pointwise conv's input)
    pw_w: TensorInfo
    pw_b: TensorInfo
    pw_out: TensorInfo
    add_out: TensorInfo
    pooled: TensorInfo
    fc_w: TensorInfo
    fc_b: TensorInfo
    logit: TensorInfo

    @classmethod
    def of(cls, it) -> HeadLayout:
        ops = it._get_ops_details()
        real = [o for o in ops if o["op_name"] != "DELEGATE"]
        producer = {int(t): o for o in real for t in o["outputs"]}
        details = {t["index"]: t for t in it.get_tensor_details()}

        def info(i: int) -> TensorInfo:
            q = details[int(i)]["quantization_parameters"]
            zp = q["zero_points"]
            return TensorInfo(int(i), np.asarray(q["scales"], np.float32), int(zp[0]) if len(zp) else 0)

        def through_reshape(t: int) -> int:
            while producer.get(t) is not None and producer[t]["op_name"] in ("RESHAPE", "EXPAND_DIMS"):
                t = int(producer[t]["inputs"][0])
            return t

        fc = next(o for o in real if o["op_name"] == "FULLY_CONNECTED")
        mean = producer[int(fc["inputs"][0])]
        add = producer[int(mean["inputs"][0])]
        if mean["op_name"] != "MEAN" or add["op_name"] != "ADD":
            raise ValueError("the model does not end in ADD -> MEAN -> FULLY_CONNECTED (not a tiny DS-CNN)")
        conv_out = None
        for t in add["inputs"]:
            src = through_reshape(int(t))
            if producer.get(src) is not None and producer[src]["op_name"] == "CONV_2D":
                conv_out, residual = src, int(next(u for u in add["inputs"] if int(u) != int(t)))
        if conv_out is None:
            raise ValueError("the last block's residual ADD has no pointwise CONV_2D input")
        conv = producer[conv_out]
        return cls(residual=info(residual), depthwise=info(conv["inputs"][0]), pw_w=info(conv["inputs"][1]),
                   pw_b=info(conv["inputs"][2]), pw_out=info(conv_out), add_out=info(add["outputs"][0]),
                   pooled=info(mean["outputs"][0]), fc_w=info(fc["inputs"][1]), fc_b=info(fc["inputs"][2]),
                   logit=info(fc["outputs"][0]))


def read_head(model: bytes | str | Path) -> tuple[dict[str, np.ndarray], HeadLayout]:
    """The head's float weights (dequantized from the int8 model) and where they live."""
    it = _interpreter(model, preserve=True)
    lay = HeadLayout.of(it)
    w_q = it.get_tensor(lay.pw_w.index).reshape(lay.pw_w.scales.size, -1)  # [out, in]
    params = {
        "pw_w": w_q.astype(np.float32) * lay.pw_w.scales[:, None],
        "pw_b": it.get_tensor(lay.pw_b.index).astype(np.float32) * lay.pw_b.scales,
        "fc_w": it.get_tensor(lay.fc_w.index).reshape(-1).astype(np.float32) * lay.fc_w.scales[0],
        "fc_b": it.get_tensor(lay.fc_b.index).reshape(-1).astype(np.float32) * lay.fc_b.scales[0],
    }
    return params, lay


def extract(model: bytes | str | Path, windows_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, D) of each int8 window (quantized as the model's input): the frozen layers' outputs, float16."""
    it = _interpreter(model, preserve=True)
    lay = HeadLayout.of(it)
    inp = it.get_input_details()[0]
    n = len(windows_q)
    t, c = int(np.prod(it.get_tensor(lay.residual.index).shape[:-1])), int(it.get_tensor(lay.residual.index).shape[-1])
    r = np.zeros((n, t, c), np.float16)
    d = np.zeros((n, t, c), np.float16)
    for i in range(n):
        it.set_tensor(inp["index"], np.asarray(windows_q[i], np.int8).reshape(inp["shape"]))
        it.invoke()
        r[i] = lay.residual.dequantize(it.get_tensor(lay.residual.index)).reshape(t, c)
        d[i] = lay.depthwise.dequantize(it.get_tensor(lay.depthwise.index)).reshape(t, c)
    return r, d


class Head:
    """Float forward/backward of the head with the int8 graph's activation ranges."""

    def __init__(self, layout: HeadLayout) -> None:
        self.h_hi = layout.add_out.range[1]
        self.p_hi = layout.pooled.range[1]

    def forward(self, p: dict, r: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, tuple]:
        z = r.astype(np.float32) + d.astype(np.float32) @ p["pw_w"].T + p["pw_b"]
        h = np.clip(z, 0.0, self.h_hi)
        m = h.mean(axis=1)
        pooled = np.clip(m, 0.0, self.p_hi)
        logit = pooled @ p["fc_w"] + p["fc_b"][0]
        return logit, (d, z, m, pooled)

    def logits(self, p: dict, r: np.ndarray, d: np.ndarray, batch: int = 2048) -> np.ndarray:
        return np.concatenate([self.forward(p, r[i:i + batch], d[i:i + batch])[0] for i in range(0, len(r), batch)]) \
            if len(r) else np.zeros(0, np.float32)

    def grads(self, p: dict, r: np.ndarray, d: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, dict]:
        logit, (d32, z, m, pooled) = self.forward(p, r, d)
        prob = 1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))
        eps = 1e-7
        loss = float(-np.sum(w * (y * np.log(prob + eps) + (1 - y) * np.log(1 - prob + eps))) / np.sum(w))
        g_logit = w * (prob - y) / np.sum(w)                                # [n]
        g = {"fc_w": pooled.T @ g_logit, "fc_b": np.array([g_logit.sum()], np.float32)}
        g_pool = g_logit[:, None] * p["fc_w"][None, :] * ((m > 0) & (m < self.p_hi))       # [n, c]
        g_z = (g_pool[:, None, :] / z.shape[1]) * ((z > 0) & (z < self.h_hi))           # [n, t, c]
        g["pw_w"] = np.einsum("ntc,nti->ci", g_z, d32)
        g["pw_b"] = g_z.sum(axis=(0, 1))
        return loss, g


def fine_tune(params: dict, layout: HeadLayout, r: np.ndarray, d: np.ndarray, y: np.ndarray, *,
              epochs: int = 30, lr: float = 3e-3, batch: int = 64, proximal_mu: float = 0.0,
              l2: float = 1e-4, trainable: str = "pw+fc", seed: int = 0,
              positive_share: float = 0.5) -> tuple[dict, dict]:
    """Adam on binary cross-entropy with the positives given ``positive_share`` of the total weight, plus
    FedProx's proximal term ``mu/2 ||w - w0||^2``
    towards the received weights ``params``. Returns (new params, training stats)."""
    names = LAYERS[trainable]
    head = Head(layout)
    w0 = {k: v.astype(np.float32).copy() for k, v in params.items()}
    p = {k: v.copy() for k, v in w0.items()}
    y = np.asarray(y, np.float32)
    n_pos = max(1.0, float(y.sum()))
    n_neg = max(1.0, float(len(y) - y.sum()))
    weight = np.where(y > 0.5, len(y) * positive_share / n_pos,
                      len(y) * (1 - positive_share) / n_neg).astype(np.float32)
    m = {k: np.zeros_like(p[k]) for k in names}
    v = {k: np.zeros_like(p[k]) for k in names}
    rng = np.random.default_rng(seed)
    step, losses = 0, []
    b1, b2 = 0.9, 0.999
    for _ in range(epochs):
        order = rng.permutation(len(y))
        epoch_loss = 0.0
        for a in range(0, len(y), batch):
            idx = order[a:a + batch]
            loss, g = head.grads(p, r[idx], d[idx], y[idx], weight[idx])
            epoch_loss += loss * len(idx)
            step += 1
            for k in names:
                gk = g[k] + l2 * p[k] + proximal_mu * (p[k] - w0[k])
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                p[k] = p[k] - lr * (m[k] / (1 - b1 ** step)) / (np.sqrt(v[k] / (1 - b2 ** step)) + 1e-8)
        losses.append(epoch_loss / max(1, len(y)))
    return p, {"loss_first": round(losses[0], 4) if losses else None,
               "loss_last": round(losses[-1], 4) if losses else None, "steps": step}
