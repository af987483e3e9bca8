"""The model family: depthwise-separable temporal CNNs (DS-CNN in 1-D, as in TC-ResNet).

Mel bands are channels and convolutions run along time only. Per inference this costs a fraction of
a 2-D DS-CNN's MACs at the same accuracy, every op (Conv1D, depthwise, ReLU, add, mean, dense) has an
int8 TFLite kernel, and stride-1 layers can be turned into ring-buffered streaming convolutions on
an MCU. The tiny model, the verifier and the command recogniser differ only in width and context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud.train.recipe import ModelSpec


def build(spec: ModelSpec, *, dim: int, n_out: int, mean: np.ndarray, std: np.ndarray, name: str):
    import keras
    from keras import layers

    inp = keras.Input((spec.window_frames, dim), name="features")
    # Standardisation inside the model: the node feeds raw features and quantization sees real ranges.
    x = layers.Rescaling(scale=(1.0 / std).astype(np.float32), offset=(-mean / std).astype(np.float32),
                         name="standardise")(inp)
    # Both are identity at inference (and absent from the TFLite graph); they fight the voice
    # over-fitting that a few dozen synthetic voices invite.
    if spec.band_dropout > 0:
        x = layers.SpatialDropout1D(spec.band_dropout, name="band_dropout")(x)  # drops bands across all frames
    if spec.input_noise > 0:
        x = layers.GaussianNoise(spec.input_noise, name="input_noise")(x)
    x = layers.Conv1D(spec.stem, 5, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(momentum=spec.bn_momentum, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for i, (ch, stride) in enumerate(spec.blocks):
        y = layers.DepthwiseConv1D(spec.kernel, strides=stride, padding="same", use_bias=False, name=f"b{i}_dw")(x)
        y = layers.BatchNormalization(momentum=spec.bn_momentum, name=f"b{i}_dw_bn")(y)
        y = layers.ReLU(name=f"b{i}_dw_relu")(y)
        y = layers.Conv1D(ch, 1, use_bias=False, name=f"b{i}_pw")(y)
        y = layers.BatchNormalization(momentum=spec.bn_momentum, name=f"b{i}_pw_bn")(y)
        if stride == 1 and x.shape[-1] == ch:
            y = layers.Add(name=f"b{i}_add")([x, y])
        x = layers.ReLU(name=f"b{i}_relu")(y)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.Dropout(spec.dropout, name="dropout")(x)
    logit = layers.Dense(n_out, name="logit")(x)
    out = layers.Activation("sigmoid" if n_out == 1 else "softmax", name="posterior")(logit)
    return keras.Model(inp, out, name=name)


def build_head(spec, *, dim: int, mean: np.ndarray, std: np.ndarray, name: str):
    """A dense classifier on a window of speech embeddings (``spec``: recipe.EmbeddingHeadSpec), as
    openWakeWord's heads are: the embedding carries what is known about speech, the head only the phrase."""
    import keras
    from keras import layers

    inp = keras.Input((spec.window, dim), name="embeddings")
    x = layers.Rescaling(scale=(1.0 / std).astype(np.float32), offset=(-mean / std).astype(np.float32),
                         name="standardise")(inp)
    if spec.kind == "conv":
        # Dilated convolutions share their weights along the window: far fewer parameters than a flattened
        # dense layer, so the head over-fits the training voices less.
        x = layers.Dropout(0.1, name="input_dropout")(x)
        for i in range(spec.layers):
            x = layers.Conv1D(spec.hidden, 3, padding="same", dilation_rate=2 ** i, name=f"conv{i}")(x)
            x = layers.LayerNormalization(name=f"conv_norm{i}")(x)
            x = layers.ReLU(name=f"conv_relu{i}")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dropout(spec.dropout, name="flat_dropout")(x)
        x = layers.Dense(spec.hidden, name="dense0")(x)
        x = layers.ReLU(name="relu0")(x)
        x = layers.Dropout(spec.dropout, name="dropout0")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
        for i in range(spec.layers):
            x = layers.Dense(spec.hidden, name=f"dense{i}")(x)
            x = layers.LayerNormalization(name=f"norm{i}")(x)
            x = layers.ReLU(name=f"relu{i}")(x)
            x = layers.Dropout(spec.dropout, name=f"dropout{i}")(x)
    logit = layers.Dense(1, name="logit")(x)
    out = layers.Activation("sigmoid", name="posterior")(logit)
    return keras.Model(inp, out, name=name)


def logits(model):
    """The same model without its final activation (same weights): what a logit-output export converts."""
    import keras

    return keras.Model(model.inputs, model.get_layer("logit").output, name=f"{model.name}_logit")


@dataclass(frozen=True, slots=True)
class Cost:
    params: int
    macs: int


def cost(model) -> Cost:
    """Parameters and multiply-accumulates of one inference (BN folded away, so not counted)."""
    from keras import layers

    macs = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv1D):
            t_out, ch = layer.output.shape[1], layer.output.shape[2]
            macs += t_out * ch * layer.kernel_size[0]
        elif isinstance(layer, layers.Conv1D):
            t_out, c_out = layer.output.shape[1], layer.output.shape[2]
            macs += t_out * c_out * layer.input.shape[-1] * layer.kernel_size[0]
        elif isinstance(layer, layers.Dense):
            macs += layer.input.shape[-1] * layer.units
        elif isinstance(layer, layers.Rescaling):
            macs += int(np.prod(layer.input.shape[1:]))
    params = sum(int(np.prod(w.shape)) for layer in model.layers if not isinstance(layer, layers.BatchNormalization)
                 for w in layer.weights)
    return Cost(params=params, macs=int(macs))
