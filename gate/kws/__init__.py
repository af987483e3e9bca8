"""The tiny keyword spotter on the node: features -> int8 model -> detector, on the audio clock."""

from gate.kws.config import KwsConfig
from gate.kws.interpreter import InterpreterError, ModelError, TFLiteModel, find_interpreter
from gate.kws.stage import KeywordSpotter, default_model_path
from gate_core.detector import Detection, Detector

__all__ = ["Detection", "Detector", "InterpreterError", "KeywordSpotter", "KwsConfig", "ModelError", "TFLiteModel",
           "default_model_path", "find_interpreter"]
