"""Copy a training run's models into the packages: tiny under gate/models/, cloud under cloud/models/,
and the speech-embedding head (verifier v2, also the node's second stage) as gate/models/second_stage.

Of the tiny log-mel candidates (hard labels, distilled) the one that misses least on the evaluation
scenes while keeping to the false-accept goal is shipped; its card says which it was and why. Each model
goes with its runtime card (``<model>.json``) and its evaluation record (``<model>.eval.json``, gate_core.cards).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gate_core import cards
from gate_core.cliutil import read_json
from gate_core.errors import GateError

ROOT = Path(__file__).resolve().parents[2]
GATE_MODELS = ROOT / "gate" / "models"
CLOUD_MODELS = ROOT / "cloud" / "models"
FA_GOAL_PER_HOUR = 0.5


class ShipError(GateError):
    code = "ship_invalid"


def pick_tiny(card: dict, kind: str) -> str:
    names = [n for n in card["models"] if n.startswith(f"tiny_{kind}")]
    if not names:
        raise ValueError(f"no tiny {kind} model in this run")
    ev = card.get("evaluation", {})

    def rank(name: str) -> tuple:
        tiny = ev.get(name, {}).get("tiny")
        if tiny is None:
            return (1, 0.0, 0.0)
        return (0 if tiny["fa_per_hour"] <= FA_GOAL_PER_HOUR else 1, tiny["miss_rate"], tiny["fa_per_hour"])

    return min(sorted(names), key=rank)


def read_run(run_dir: Path) -> dict:
    """The run's card.json, checked: it lists models and every listed model's .tflite and .json are
    there. A ShipError naming the file otherwise, before anything is copied."""
    card_path = run_dir / "card.json"
    if not card_path.is_file():
        raise ShipError(f"{run_dir}: not a finished training run (no card.json)", code="run_incomplete")
    card = read_json(card_path, "training run card (JSON)")
    if not isinstance(card, dict) or not isinstance(card.get("models"), dict) or not card["models"]:
        raise ShipError(f"{card_path}: models: missing or empty", code="run_incomplete")
    for name in card["models"]:
        for ext in (".tflite", ".json"):
            if not (run_dir / f"{name}{ext}").is_file():
                raise ShipError(f"{run_dir}: the card lists {name} but {name}{ext} is missing", code="run_incomplete")
    return card


def run_model_card(run_dir: Path, name: str) -> dict:
    """A run's model card in one piece: ``<name>.json`` with ``<name>.eval.json`` when the run split them."""
    card = read_json(run_dir / f"{name}.json", "model card (JSON)")
    if not isinstance(card, dict):
        raise ShipError(f"{run_dir / name}.json: a model card is a JSON object, not {type(card).__name__}",
                        code="run_incomplete")
    try:
        return {**card, **cards.read_record(run_dir / f"{name}.tflite")}
    except cards.CardError as exc:
        raise ShipError(exc.args[0], code="run_incomplete") from None


def _install(run_dir: Path, name: str, dst: Path, model_card: dict) -> str:
    """Copy the run's model to ``dst``.tflite and write its runtime card and evaluation record beside it."""
    try:
        cards.write_model_card(dst.with_suffix(".tflite"), model_card)
    except cards.CardError as exc:
        raise ShipError(exc.args[0], code="run_incomplete") from None
    shutil.copyfile(run_dir / f"{name}.tflite", dst.with_suffix(".tflite"))
    return str(dst.with_suffix(".tflite"))


def ship(run_dir: Path, gate_models: Path = GATE_MODELS, cloud_models: Path = CLOUD_MODELS) -> dict[str, str]:
    card = read_run(run_dir)
    gate_models.mkdir(parents=True, exist_ok=True)
    cloud_models.mkdir(parents=True, exist_ok=True)
    shipped: dict[str, str] = {}
    for kind in ("logmel", "analog_envelopes"):
        try:
            name = pick_tiny(card, kind)
        except ValueError:
            continue
        dst = gate_models / f"kws_{kind}"
        shipped[name] = _install(run_dir, name, dst, {
            **run_model_card(run_dir, name), "shipped_as": dst.name,
            "chosen_from": [n for n in card["models"] if n.startswith(f"tiny_{kind}")],
            "training": card.get("training"), "data": card.get("data")})
    for name in ("verifier", "commands"):
        if name not in card["models"]:
            continue  # a partial run (--only) leaves the shipped one in place
        shipped[name] = _install(run_dir, name, cloud_models / name,
                                 {**run_model_card(run_dir, name), "training": card.get("training")})
    if "verifier_v2" in card["models"]:
        # One head serves both: the node's second stage and the cloud's verifier v2 (cloud.verifier reads it here).
        dst = gate_models / "second_stage"
        shipped["verifier_v2"] = _install(run_dir, "verifier_v2", dst, {
            **run_model_card(run_dir, "verifier_v2"), "training": card.get("training"), "shipped_as": dst.name})
    return shipped
