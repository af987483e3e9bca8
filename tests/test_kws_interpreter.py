"""The one interpreter loader: fallbacks, the clear error, and quantization read from the tensors."""

from __future__ import annotations

import types

import numpy as np
import pytest

from gate.kws.interpreter import BACKENDS, InterpreterError, ModelError, TensorQuant, TFLiteModel, find_interpreter


class _Interp:
    pass


def _importer(fail: dict[str, Exception]):
    def imp(name: str):
        if name in fail:
            raise fail[name]
        return types.SimpleNamespace(Interpreter=_Interp)
    return imp


def test_first_backend_that_imports_wins():
    assert find_interpreter(importer=_importer({})) == ("ai_edge_litert", _Interp)


def test_falls_back_past_missing_and_numpy_abi_broken_backends():
    fail = {"ai_edge_litert.interpreter": ImportError("No module named 'ai_edge_litert'"),
            # tflite-runtime 2.14 under numpy 2 fails at import with this, not with ImportError.
            "tflite_runtime.interpreter": AttributeError("_ARRAY_API not found")}
    assert find_interpreter(importer=_importer(fail)) == ("tensorflow", _Interp)
    del fail["tflite_runtime.interpreter"]
    assert find_interpreter(importer=_importer(fail))[0] == "tflite_runtime"


def test_no_backend_is_a_clear_error_naming_every_attempt_and_the_fix():
    fail = {m: ImportError(f"No module named '{m.split('.')[0]}'") for _, m in BACKENDS}
    with pytest.raises(InterpreterError) as err:
        find_interpreter(importer=_importer(fail))
    text = str(err.value)
    for _, module in BACKENDS:
        assert module in text
    assert "pip install ai-edge-litert" in text
    assert err.value.code == "interpreter_unavailable"


def test_missing_and_corrupt_model_files(tmp_path):
    pytest.importorskip("ai_edge_litert")
    with pytest.raises(ModelError) as err:
        TFLiteModel(model_path=tmp_path / "nope.tflite")
    assert err.value.code == "model_missing"
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(ModelError):
        TFLiteModel(model_path=bad)


def test_tensor_quant_round_trip_and_saturation():
    q = TensorQuant(index=0, shape=(1, 4), dtype=np.dtype(np.int8), scale=0.05, zero_point=-10)
    x = np.array([-5.9, -1.0, 0.0, 6.85], np.float32)
    back = q.dequantize(q.quantize(x))
    np.testing.assert_allclose(back, x, atol=q.scale / 2 + 1e-6)
    assert q.quantize(np.array([100.0]))[0] == 127 and q.quantize(np.array([-100.0]))[0] == -128
    f = TensorQuant(index=0, shape=(1,), dtype=np.dtype(np.float32), scale=0.0, zero_point=0)
    assert not f.quantized and f.quantize(np.array([1.5]))[0] == np.float32(1.5)


def _small_model(n: int):
    """``n`` random log-mel-like windows and an untrained binary model of the training family."""
    tf = pytest.importorskip("tensorflow")
    from cloud.train.models import build
    from cloud.train.recipe import ModelSpec

    tf.keras.utils.set_random_seed(0)
    spec = ModelSpec(window_frames=20, stem=8, blocks=[(8, 1), (12, 2)], kernel=3, epochs=1)
    x = np.random.default_rng(0).normal(-5, 2, (n, 20, 40)).astype(np.float32)
    return x, build(spec, dim=40, n_out=1, mean=np.full(40, -5.0), std=np.full(40, 2.0), name="q")


def test_int8_conversion_round_trip_tracks_float():
    """Full-integer PTQ with a representative set: int8 outputs stay close to the float model's."""
    from cloud.train.fit import to_tflite

    x, model = _small_model(64)
    ref = model.predict(x, verbose=0)[:, 0]
    q = TFLiteModel(model_content=to_tflite(model, int8=True, representative=x))
    f = TFLiteModel(model_content=to_tflite(model, int8=False))
    assert q.input.dtype == np.int8 and q.input.scale > 0 and q.output.dtype == np.int8
    assert f.input.dtype == np.float32 and not f.input.quantized
    np.testing.assert_allclose(f.run_batch(x)[:, 0], ref, atol=1e-5)
    assert np.max(np.abs(q.run_batch(x)[:, 0] - ref)) < 0.05


def test_shipped_tiny_model_declares_its_quantization():
    pytest.importorskip("ai_edge_litert")
    from gate.kws.stage import default_model_path

    m = TFLiteModel(model_path=default_model_path("logmel"))
    assert m.input.dtype == np.int8 and m.input.scale > 0
    assert m.output.dtype == np.int8 and m.output.scale > 0
    assert m.input.shape[2] == 40
    assert m.size_bytes <= 64 * 1024
    assert m.backend == "ai_edge_litert"


def test_logit_output_keeps_resolution_near_one_and_is_read_as_a_probability(tmp_path):
    """A sigmoid-output int8 model has one level for every window scored above 0.996; a logit output
    still ranks them, and the spotter reads it back as the same probability."""
    from cloud.train.fit import to_tflite
    from cloud.train.models import logits
    from gate.kws.stage import outputs_logits, sigmoid

    x, model = _small_model(200)
    # Make the model confident: scale the last layer so its logits spread over about +-12.
    dense = model.get_layer("logit")
    z = logits(model).predict(x, verbose=0)[:, 0]
    k = 12.0 / max(1e-6, float(np.max(np.abs(z))))
    dense.kernel.assign(dense.kernel * k)
    dense.bias.assign(dense.bias * k)
    ref = model.predict(x, verbose=0)[:, 0]
    prob = TFLiteModel(model_content=to_tflite(model, int8=True, representative=x))
    logit = TFLiteModel(model_content=to_tflite(logits(model), int8=True, representative=x))
    assert not outputs_logits(prob, {}) and outputs_logits(logit, {})
    top = ref > 0.997
    assert top.sum() >= 10
    p_prob = prob.run_batch(x[top])[:, 0]
    p_logit = sigmoid(logit.run_batch(x[top])[:, 0])
    assert len(np.unique(p_prob)) == 1  # every confident window on the top level
    assert len(np.unique(p_logit)) > 5
    # Same ranking as the float model there (up to quantization), and the same probabilities overall.
    assert np.corrcoef(p_logit, ref[top])[0, 1] > 0.9
    assert np.max(np.abs(sigmoid(logit.run_batch(x)[:, 0]) - ref)) < 0.05
    # A float output cannot say which it is: the card does.
    f = TFLiteModel(model_content=to_tflite(logits(model), int8=False))
    assert not outputs_logits(f, {}) and outputs_logits(f, {"output": "logit"})
