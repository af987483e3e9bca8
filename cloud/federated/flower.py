"""The Flower apps: a ClientApp on each node (fine-tunes the head on its own feature store and answers
with the weight update only) and a ServerApp (FedProx, which is FedAvg when mu is 0) run on Flower's
simulation runtime (``flwr.simulation.run_simulation``, Ray backend).

Every message carries the head's arrays in ``HEAD`` order. The server sends the global head; a client
answers with ``local - global`` of the layers it trains (the update), its example count, CPU seconds
and the update's bytes; the strategy averages the updates weighted by examples and adds the mean to
the global head.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from gate.fedhead import LAYERS, extract, fine_tune, read_head
from gate.fedstore import NEGATIVE, FeatureStore, Quant

HEAD = ("pw_w", "pw_b", "fc_w", "fc_b")
log = logging.getLogger(__name__)


def node_dir(fleet_dir: str | Path, partition: int) -> Path:
    return Path(fleet_dir) / f"node{int(partition):02d}"


def open_store(root: Path, model: str | Path, *, capacity: int = 4000) -> FeatureStore:
    from gate.kws.interpreter import TFLiteModel

    m = TFLiteModel(model_path=model)
    return FeatureStore(root / "store", capacity=capacity, frames=m.input.shape[1], dim=m.input.shape[2],
                        quant=Quant(m.input.scale, m.input.zero_point))


def local_round(root: Path, base_model: str | Path, global_head: dict, *, epochs: int, lr: float, mu: float,
                trainable: str, seed: int, positive_share: float, hard_negative_repeat: int = 1) -> tuple[dict, dict]:
    """What a node does in one round: its stored windows through the frozen layers (computed once, kept
    beside the store), then the head fine-tuned from ``global_head``, each labelled negative (a verdict's,
    not a background window) seen ``hard_negative_repeat`` times an epoch. Returns (update, stats)."""
    cpu0 = time.process_time()
    store = open_store(root, base_model)
    x, y = store.dataset()
    cache = root / "store" / "frozen.npz"
    stamp = f"{store.path.stat().st_mtime_ns}:{len(x)}"
    if cache.is_file():
        with np.load(cache) as z:
            ok = str(z["stamp"]) == stamp
            if ok:
                r, d = z["r"], z["d"]
    else:
        ok = False
    if not ok:
        r, d = extract(base_model, x)
        np.savez(cache, r=r, d=d, stamp=np.array(stamp))
    _, layout = read_head(base_model)
    idx = np.arange(len(y))
    if hard_negative_repeat > 1:
        hard = np.flatnonzero(store.y == NEGATIVE)   # the labelled windows come first in store.dataset()
        idx = np.concatenate([idx, np.repeat(hard, hard_negative_repeat - 1)])
    new, stats = fine_tune(global_head, layout, r[idx], d[idx], y[idx], epochs=epochs, lr=lr, proximal_mu=mu,
                           trainable=trainable, seed=seed, positive_share=positive_share)
    update = {k: (new[k] - global_head[k]).astype(np.float32) for k in LAYERS[trainable]}
    stats.update(examples=int(len(y)), positives=int(np.sum(y == 1)), cpu_s=time.process_time() - cpu0,
                 update_bytes=int(sum(v.nbytes for v in update.values())))
    return update, stats


# ------------------------------------------------------------------------------------------ client

def _client_app():
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = msg.content["config"]
        part = int(context.node_config["partition-id"])
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        global_head = {k: np.asarray(a, np.float32) for k, a in zip(HEAD, arrays, strict=True)}
        trainable = str(cfg["trainable"])
        update, stats = local_round(node_dir(str(cfg["fleet-dir"]), part), str(cfg["base-model"]), global_head,
                                    epochs=int(cfg["epochs"]), lr=float(cfg["lr"]),
                                    mu=float(cfg.get("proximal-mu", 0.0)), trainable=trainable,
                                    seed=int(cfg["seed"]) * 1000 + part,
                                    positive_share=float(cfg["positive-share"]),
                                    hard_negative_repeat=int(cfg["hard-negative-repeat"]))
        # Layers a node does not train travel as zero-size arrays: the update is only what it changed.
        out = [update[k] if k in update else np.zeros(0, np.float32) for k in HEAD]
        metrics = MetricRecord({"num-examples": stats["examples"], "partition": part, "cpu-s": float(stats["cpu_s"]),
                                "update-bytes": stats["update_bytes"], "positives": stats["positives"],
                                "loss-first": float(stats["loss_first"] or 0.0),
                                "loss-last": float(stats["loss_last"] or 0.0)})
        return Message(content=RecordDict({"arrays": ArrayRecord(out), "metrics": metrics}), reply_to=msg)

    return app


# ------------------------------------------------------------------------------------------ server

def _strategy_class():
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedProx

    class UpdateFedProx(FedProx):
        """FedProx on weight updates: the weighted mean of the nodes' updates is added to the global head;
        every reply's metrics are kept per round (bytes and CPU of each node)."""

        def __init__(self, *args, **kw) -> None:
            super().__init__(*args, **kw)
            self.current: list[np.ndarray] | None = None
            self.rounds: list[list[dict]] = []

        def configure_train(self, server_round, arrays, config, grid):
            self.current = [np.asarray(a, np.float32) for a in arrays.to_numpy_ndarrays()]
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            self.rounds.append([dict(m.content["metrics"]) for m in replies if m.has_content()])
            mean, metrics = super().aggregate_train(server_round, replies)
            if mean is None or self.current is None:
                return mean, metrics
            upd = mean.to_numpy_ndarrays()
            new = [g + u.reshape(g.shape) if u.size else g for g, u in zip(self.current, upd, strict=True)]
            return ArrayRecord([np.asarray(a, np.float32) for a in new]), metrics

    return UpdateFedProx


def run(*, fleet_dir: Path, base_model: Path, nodes: int, rounds: int, mu: float, epochs: int, lr: float,
        trainable: str, seed: int, positive_share: float, hard_negative_repeat: int = 1, evaluate_fn=None) -> dict:
    """Run the rounds on Flower's simulation runtime; returns the final head and each round's replies."""
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    head0, _ = read_head(base_model)
    outcome: dict = {}
    strategy = _strategy_class()(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes,
                                 min_available_nodes=nodes, proximal_mu=mu)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = ConfigRecord({"fleet-dir": str(fleet_dir), "base-model": str(base_model), "epochs": epochs,
                            "lr": lr, "trainable": trainable, "seed": seed,
                            "positive-share": positive_share, "hard-negative-repeat": hard_negative_repeat})
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord([head0[k] for k in HEAD]),
                                num_rounds=rounds, train_config=cfg, evaluate_fn=evaluate_fn)
        outcome["head"] = dict(zip(HEAD, result.arrays.to_numpy_ndarrays(), strict=True))

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    workers = max(1, min(nodes, int(os.environ.get("GATE_FED_WORKERS", "2"))))
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": workers, "include_dashboard": False, "logging_level": logging.ERROR,
                             "log_to_driver": False}}
    run_simulation(server_app=server, client_app=_client_app(), num_supernodes=nodes, backend_config=backend)
    if "head" not in outcome:
        raise RuntimeError("the Flower run ended without a final model (see the Flower log above)")
    outcome["rounds"] = strategy.rounds
    return outcome


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
