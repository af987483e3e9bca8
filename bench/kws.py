"""Inference latency of the shipped models on this host: tiny int8 KWS per window, features per frame,
verifiers (v1, v2) and command recogniser per forwarded segment, the node's second-stage check per
candidate and its ratio to one KWS hop (what the Pi profiles' second_stage figure scales by).
Medians over repeated runs, one thread."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPEATS = 300


def _median_ms(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up: first invoke allocates
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def _project_first() -> None:
    # bench/run.py puts bench/ first on sys.path, where bench/cloud.py shadows the cloud package.
    root = str(Path(__file__).resolve().parents[1])
    if sys.path[0] != root:
        sys.path.insert(0, root)
    mod = sys.modules.get("cloud")
    if mod is not None and not hasattr(mod, "__path__"):
        del sys.modules["cloud"]


def run() -> dict:
    _project_first()
    from cloud.commands import CommandRecognizer
    from cloud.verifier import Verifier
    from gate.features import LogMel
    from gate.kws.config import KwsConfig
    from gate.kws.interpreter import TFLiteModel
    from gate.kws.stage import KeywordSpotter, default_model_path

    rng = np.random.default_rng(0)
    tiny = TFLiteModel(model_path=default_model_path("logmel"))
    x = rng.normal(-8, 2, tiny.input.shape).astype(np.float32)
    tiny_ms = _median_ms(lambda: tiny(x))

    lm = LogMel()
    audio = (rng.standard_normal(16000 * 2) * 1000).astype(np.int16)
    chunk = audio[:160]
    lm.push(audio[:400])
    feat_ms = _median_ms(lambda: lm.push(chunk), 2000)

    kws = KeywordSpotter.from_config(KwsConfig())
    second = (rng.standard_normal(16000 * 10) * 1000).astype(np.int16)
    t0 = time.process_time()
    for i in range(0, second.size, 1600):
        kws.process(second[i:i + 1600])
    stream_cpu_s_per_audio_s = (time.process_time() - t0) / 10.0

    verifier = Verifier()
    seg = (rng.standard_normal(16000 * 3) * 1000).astype(np.int16)
    ver_ms = _median_ms(lambda: verifier.score(seg, 2.5), 30)
    commands = CommandRecognizer()
    cmd_ms = _median_ms(lambda: commands.recognise(seg, 0.5), 30)
    extra = _embedding_checks(seg, tiny_ms + feat_ms * kws.stride_frames)
    return {
        **extra,
        "tiny_int8_ms_per_inference": round(tiny_ms, 4),
        "tiny_int8_ms_per_inference_max": 5.0,
        "logmel_ms_per_10ms_frame": round(feat_ms, 4),
        "logmel_ms_per_10ms_frame_max": 1.0,
        "kws_stream_cpu_s_per_audio_hour": round(stream_cpu_s_per_audio_s * 3600, 1),
        "kws_stream_cpu_s_per_audio_hour_max": 120.0,
        "verifier_ms_per_segment": round(ver_ms, 3),
        "verifier_ms_per_segment_max": 100.0,
        "commands_ms_per_segment": round(cmd_ms, 3),
        "commands_ms_per_segment_max": 100.0,
        "tiny_model_bytes": tiny.size_bytes,
        "tiny_model_bytes_max": 65536,
        "backend": tiny.backend,
    }


def _embedding_checks(seg: np.ndarray, hop_ms: float) -> dict:
    """Verifier v2 per segment and the node's second stage per candidate (the same head on speech
    embeddings); skipped, with the reason, when the embedding package or the shipped heads are missing."""
    from gate.kws.interpreter import ModelError
    from gate.kws.second_stage import DEFAULT_SECOND_STAGE, EmbeddingCheck

    try:
        check = EmbeddingCheck(model_path=DEFAULT_SECOND_STAGE)
    except ModelError as exc:
        return {"second_stage_skipped": str(exc)}
    check_ms = _median_ms(lambda: check.score(seg, 2.0), 30)
    return {"second_stage_check_ms": round(check_ms, 3), "second_stage_check_ms_max": 500.0,
            "second_stage_check_per_kws_hop": round(check_ms / hop_ms, 1),
            "verifier_v2_ms_per_segment": round(check_ms, 3)}
