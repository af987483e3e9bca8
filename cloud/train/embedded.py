"""Models on the speech-embedding front end (gate/kws/embedding.py): the cloud verifier v2.

The embedding was learned by Google from real human speech; only the small dense head on top of it
is trained here, on the same clips and scene-like streams as the other models (training voices only).
Embedding a clip is the slow part (about 20 ms of CPU per second of audio), so the embeddings of a
clip set are kept in the cache directory, keyed by the audio itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cloud.train import dataset, fit
from cloud.train.models import build_head, cost
from cloud.train.recipe import EmbeddingHeadSpec, Recipe
from gate.kws.embedding import SAMPLE_RATE, SpeechEmbedding

_SPAN, _HOP = SpeechEmbedding.span, SpeechEmbedding.hop

log = logging.getLogger(__name__)


def _key(audio: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(audio).view(np.uint8))
    h.update(str(audio.shape).encode())
    return h.hexdigest()[:16]


def embed_clips(clips: dataset.Clips, embedding, window: int, cache: Path | None, desc: str) -> np.ndarray:
    """(n, window, 96): the last ``window`` embeddings of every clip (cached by the clips' audio)."""
    path = cache / f"embeddings-{_key(clips.audio)}-{window}.npy" if cache else None
    if path is not None and path.is_file():
        return np.load(path)
    out = dataset.featurize(clips, embedding, window, desc=desc)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


class _Precomputed:
    """Features already computed for one scene, behind the two calls dataset.stream makes of a featurizer."""

    def __init__(self, embedding, feats: np.ndarray) -> None:
        self.dim, self.frame_end_s, self.feats = embedding.dim, embedding.frame_end_s, feats

    def compute(self, _samples: np.ndarray) -> np.ndarray:
        return self.feats


def embed_streams(scenes: list, embedding, cache: Path | None, desc: str) -> list[dataset.Stream]:
    """Each scene embedded once (cached by its audio) and its windows labelled as the detector meets
    them (dataset.stream)."""
    out = []
    for s in tqdm(scenes, desc=desc, leave=False):
        path = cache / f"stream-embeddings-{_key(s.audio)}.npy" if cache else None
        if path is not None and path.is_file():
            feats = np.load(path)
        else:
            feats = embedding.compute(s.audio)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, feats)
        out.append(dataset.stream(s, _Precomputed(embedding, feats)))
    return out


def train_head(spec: EmbeddingHeadSpec, name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray,
               y_val: np.ndarray, mine_streams: list[dataset.Stream], recipe: Recipe, seed: int):
    """Train the head on clips and stream windows, then fine-tune with the negatives it scores highest
    on fresh streams. Returns the model, its history and how many negatives were mined."""
    flat = x_tr.reshape(-1, x_tr.shape[-1])
    mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-3
    if spec.seed_per_model:
        fit.reseed(seed)
    model = build_head(spec, dim=x_tr.shape[-1], mean=mean, std=std, name=name)
    hist = fit.train(model, x_tr, y_tr, epochs=spec.epochs, batch=spec.batch, lr=spec.lr, seed=recipe.seed,
                     x_val=x_val, y_val=np.asarray(y_val, np.float32), desc=name)
    ss = recipe.streams
    mined = 0
    if mine_streams and spec.mine_epochs and ss.mine_limit:
        hard = dataset.mine(lambda w: fit.predict(model, w), mine_streams, spec.window, stride=1,
                            threshold=ss.mine_threshold, limit=ss.mine_limit)
        mined = len(hard)
        log.info("%s: %d hard negatives mined", name, mined)
        if mined:
            hist = fit.train(model, np.concatenate([x_tr, hard]), np.concatenate([y_tr, np.zeros(mined, np.float32)]),
                             epochs=spec.mine_epochs, batch=spec.batch, lr=spec.lr / 3, seed=recipe.seed,
                             x_val=x_val, y_val=np.asarray(y_val, np.float32), desc=f"{name} +mined")
    return model, hist, mined


def verifier_v2(recipe: Recipe, out: Path, *, clips: dataset.Clips, tr_idx: np.ndarray, val_idx: np.ndarray,
                test: dataset.Clips, stream_scenes: list, mine_scenes: list, cache: Path | None,
                seed: int) -> dict:
    """Train, export (float TFLite) and describe the verifier v2; writes verifier_v2.{tflite,json}."""
    from gate.kws.embedding import LICENCE

    spec = recipe.verifier_v2
    emb = SpeechEmbedding()
    t0 = time.process_time()
    x = embed_clips(clips, emb, spec.window, cache, "embed clips")
    x_test = embed_clips(test, emb, spec.window, cache, "embed test clips")
    streams = embed_streams(stream_scenes, emb, cache, "embed streams")
    mine = embed_streams(mine_scenes, emb, cache, "embed mining streams")
    # Embeddings are 80 ms apart: every firing-zone end is kept (about four per phrase), and every negative.
    ends = dataset.sample_ends(streams, np.random.default_rng([recipe.seed, 2]), frames=spec.window, pos_every=1,
                               neg_every=1)
    xs, ys = (dataset.gather(streams, ends, spec.window) if streams else
              (np.zeros((0, spec.window, emb.dim), np.float32), np.zeros(0, np.float32)))
    embed_cpu = time.process_time() - t0
    labels = clips.labels.astype(np.float32)
    t1 = time.process_time()
    model, hist, mined = train_head(spec, "verifier_v2", np.concatenate([x[tr_idx], xs]),
                                    np.concatenate([labels[tr_idx], ys]), x[val_idx], labels[val_idx], mine,
                                    recipe, seed)
    content = fit.to_tflite(model, int8=False)
    (out / "verifier_v2.tflite").write_bytes(content)
    p_val = fit.predict(model, x[val_idx])[:, 0]
    p_test = fit.tflite_predict(content, x_test)[:, 0]
    c = cost(model)
    # Soft labels for the tiny model (--teacher with distill.teacher verifier_v2): every clip, and every
    # window end the tiny model trains on in the streams, scored on the embedding window ending there.
    teacher_clips = fit.predict(model, x)[:, 0]
    teacher = {"clips": teacher_clips, "model": model, "streams": streams}
    card = {"model": "verifier_v2", "feature_kind": emb.kind, "features": emb.spec(), "window_embeddings": spec.window,
            "context_s": round(float(emb.frame_end_s(spec.window - 1)), 3),
            "params_head": c.params, "macs_head": c.macs, "size_bytes": len(content), "dtype": "float32",
            "threshold": recipe.evaluation.verifier_threshold, "licence": LICENCE,
            "accuracy_val_float": fit.binary_accuracy(p_val, labels[val_idx]),
            "accuracy_test_float": fit.binary_accuracy(p_test, test.labels),
            "balanced_accuracy_test_float": fit.balanced_accuracy(p_test, test.labels),
            "stream_windows": int(ys.size), "stream_positives": int(ys.sum()), "mined_negatives": mined,
            "embed_cpu_s": round(embed_cpu, 1), "train_cpu_s": round(time.process_time() - t1, 1),
            "history": {k: round(v[-1], 4) for k, v in hist.items()}, "spec": spec.model_dump(mode="json")}
    return card, teacher


def teacher_stream_scores(teacher: dict, ends: list[tuple[np.ndarray, np.ndarray]], featurizer,
                          window: int) -> np.ndarray:
    """The head's score at each of another model's stream window ends (rows of ``featurizer`` frames, the
    order dataset.gather uses): the embedding window whose last embedding ends at or before that time."""
    out = []
    for st, (pos, neg) in zip(teacher["streams"], ends, strict=True):
        padded = _padded(st.feats, window)
        for rows in (pos, neg):
            t = featurizer.frame_end_s(np.asarray(rows) - 1)
            j = np.floor((t * SAMPLE_RATE - _SPAN) / _HOP).astype(np.int64) + 1  # embedding rows ending <= t
            j = np.clip(j, 1, st.feats.shape[0])
            if j.size:
                out.append(fit.predict(teacher["model"], dataset.windows(padded, j + window - 1, window))[:, 0])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _padded(feats: np.ndarray, window: int) -> np.ndarray:
    """``feats`` with window - 1 copies of its first row in front (early ends see a padded window)."""
    return np.concatenate([np.repeat(feats[:1], window - 1, axis=0), feats])
