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


def test_int8_conversion_round_trip_tracks_float():
    """Full-integer PTQ with a representative set: int8 outputs stay close to the float model's."""
    tf = pytest.importorskip("tensorflow")
    from cloud.train.fit import to_tflite
    from cloud.train.models import build
    from cloud.train.recipe import ModelSpec

    tf.keras.utils.set_random_seed(0)
    spec = ModelSpec(window_frames=20, stem=8, blocks=[(8, 1), (12, 2)], kernel=3, epochs=1)
    rng = np.random.default_rng(0)
    x = rng.normal(-5, 2, (64, 20, 40)).astype(np.float32)
    model = build(spec, dim=40, n_out=1, mean=np.full(40, -5.0), std=np.full(40, 2.0), name="q")
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
