"""One TFLite interpreter loader for the node, the cloud, tests and benches.

Order: ``ai_edge_litert`` (LiteRT, works with numpy 2) -> ``tflite_runtime`` (fails to import
under numpy 2 at 2.14, which is why a broken import is skipped, not fatal) -> ``tensorflow.lite``.
Quantization parameters are always read from the model's tensors, never hard-coded.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gate_core import cards
from gate_core.cliutil import quiet_native_stderr
from gate_core.errors import GateError

BACKENDS: tuple[tuple[str, str], ...] = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),
)
INSTALL_HINT = "pip install ai-edge-litert (or tflite-runtime on boards without a LiteRT wheel, or tensorflow-cpu)"


class InterpreterError(GateError):
    code = "interpreter_unavailable"


class ModelError(GateError):
    code = "model_invalid"


@contextmanager
def _card_errors() -> Iterator[None]:
    try:
        yield
    except cards.CardError as exc:
        raise ModelError(exc.args[0], code=exc.code) from None


def read_card(model_path: str | Path, *, required: str | None = None) -> dict:
    """The runtime card beside a model (same name, .json; gate_core.cards), validated: a dict of its fields.
    A missing card is {} unless ``required`` says what the card is needed for, when it is an error naming
    the file and that reason. A bad card is a one-line ModelError naming the file, the field and the value."""
    with _card_errors():
        return cards.read_runtime(model_path, required=required)


def read_evaluation(model_path: str | Path) -> dict:
    """The evaluation record of a model (``<model>.eval.json``: size, compute, training, accuracies, scene
    figures), validated; {} when the model has none."""
    with _card_errors():
        return cards.read_record(model_path)


def check_card(card: object, where: object) -> dict:
    """The runtime part of an already loaded card (an over-the-air release's), validated like read_card's."""
    with _card_errors():
        return cards.check_runtime(card, where)


def find_interpreter(backends: Sequence[tuple[str, str]] = BACKENDS,
                     importer: Callable[[str], object] = importlib.import_module) -> tuple[str, type]:
    """(backend name, Interpreter class) of the first backend that imports; InterpreterError if none.

    ``importer`` is injectable so the fallbacks can be tested without uninstalling packages.
    """
    failures = []
    for name, module in backends:
        try:
            mod = importer(module)
            return name, mod.Interpreter  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - an ImportError, or numpy-ABI AttributeError/RuntimeError
            failures.append(f"{module}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise InterpreterError("no TFLite interpreter could be imported (" + "; ".join(failures) + "). " + INSTALL_HINT)


@dataclass(frozen=True, slots=True)
class TensorQuant:
    """dtype, shape, scale and zero point of one model input or output, as the model declares them."""

    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in (np.int8, np.uint8, np.int16) and self.scale > 0

    def quantize(self, x: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return np.asarray(x, dtype=self.dtype)
        info = np.iinfo(self.dtype)
        q = np.round(np.asarray(x, np.float32) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return np.asarray(q, dtype=np.float32)
        return (np.asarray(q, np.float32) - self.zero_point) * np.float32(self.scale)

    def value_range(self) -> tuple[float, float] | None:
        """The real values a quantized tensor can hold; None for a float tensor."""
        if not self.quantized:
            return None
        info = np.iinfo(self.dtype)
        lo, hi = self.dequantize(np.array([info.min, info.max]))
        return float(lo), float(hi)


class TFLiteModel:
    """A single-input, single-output .tflite model called with float features, quantized or not."""

    def __init__(self, *, model_path: str | os.PathLike | None = None, model_content: bytes | None = None,
                 num_threads: int = 1, backends: Sequence[tuple[str, str]] = BACKENDS,
                 input_shape: Sequence[int] | None = None) -> None:
        """``input_shape`` resizes the input before the graph is planned, for graphs whose declared
        shape is a placeholder (openWakeWord's mel graph declares [1, 1])."""
        if (model_path is None) == (model_content is None):
            raise ValueError("give exactly one of model_path or model_content")
        if model_path is not None:
            p = Path(model_path)
            if not p.is_file():
                raise ModelError(f"{p}: no such model file", code="model_missing")
            model_content = p.read_bytes()
        self.backend, interpreter_cls = find_interpreter(backends)
        try:
            with quiet_native_stderr():
                self._it = interpreter_cls(model_content=model_content, num_threads=num_threads)
                if input_shape is not None:
                    self._it.resize_tensor_input(self._it.get_input_details()[0]["index"],
                                                 [int(s) for s in input_shape], strict=False)
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            where = model_path if model_path is not None else "<model bytes>"
            raise ModelError(f"{where}: not a loadable TFLite model ({exc})") from exc
        self.size_bytes = len(model_content)
        self.input = _quant(self._it.get_input_details()[0])
        self.output = _quant(self._it.get_output_details()[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float input of the model's input shape -> float output (dequantized when int8)."""
        x = np.asarray(x, np.float32).reshape(self.input.shape)
        self._it.set_tensor(self.input.index, self.input.quantize(x))
        self._it.invoke()
        return self.output.dequantize(self._it.get_tensor(self.output.index))

    def resize_input(self, shape: Sequence[int]) -> None:
        """Give the input a new shape (a batch, or a different number of samples) and re-plan the graph."""
        shape = tuple(int(s) for s in shape)
        if shape == self.input.shape:
            return
        self._it.resize_tensor_input(self.input.index, list(shape), strict=False)
        self._it.allocate_tensors()
        self.input = _quant(self._it.get_input_details()[0])
        self.output = _quant(self._it.get_output_details()[0])

    def run(self, x: np.ndarray) -> np.ndarray:
        """One invocation on ``x`` of any shape the graph accepts (the input is resized to it first)."""
        x = np.asarray(x, np.float32)
        self.resize_input(x.shape)
        self._it.set_tensor(self.input.index, self.input.quantize(x))
        self._it.invoke()
        return self.output.dequantize(self._it.get_tensor(self.output.index))

    def run_batch(self, xs: np.ndarray) -> np.ndarray:
        """Rows of inputs one invocation each (the model's batch dimension is fixed at 1)."""
        return np.stack([self(x)[0] for x in xs]) if len(xs) else np.zeros((0, *self.output.shape[1:]), np.float32)


def _quant(d: dict) -> TensorQuant:
    scale, zero = d.get("quantization", (0.0, 0))
    return TensorQuant(index=int(d["index"]), shape=tuple(int(s) for s in d["shape"]), dtype=np.dtype(d["dtype"]),
                       scale=float(scale), zero_point=int(zero))
