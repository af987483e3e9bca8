"""Model cards: the runtime contract (<model>.json) and the evaluation record (<model>.eval.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cloud.train import ship
from gate.kws.interpreter import ModelError, read_card, read_evaluation
from gate_core import cards

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted([*(ROOT / "gate" / "models").glob("*.json"), *(ROOT / "cloud" / "models").glob("*.json")])
RUNTIME = [p for p in MODELS if not p.name.endswith(cards.EVAL_SUFFIX)]
LOGMEL = ROOT / "gate" / "models" / "kws_logmel.tflite"


def _json(p: Path) -> dict:
    return json.loads(p.read_text())


def _one_piece(card: Path) -> dict:
    return {**_json(card), **_json(card.with_suffix("").with_suffix(cards.EVAL_SUFFIX))}


def test_every_shipped_model_has_both_files_and_nothing_else():
    names = {p.stem for d in ("gate", "cloud") for p in (ROOT / d / "models").iterdir()}
    assert {p.stem for p in RUNTIME} == {n for n in names if not n.endswith(".eval")}
    assert {p.name.removesuffix(cards.EVAL_SUFFIX) for p in MODELS if p.name.endswith(cards.EVAL_SUFFIX)} == \
        {p.stem for p in RUNTIME}
    assert len(RUNTIME) == 6


@pytest.mark.parametrize("card", RUNTIME, ids=lambda p: p.name)
def test_every_committed_card_round_trips_through_its_schema(card):
    runtime, record = _json(card), _json(card.with_suffix("").with_suffix(cards.EVAL_SUFFIX))
    schema = cards.runtime_schema(runtime)
    assert schema.model_validate(runtime).model_dump(mode="json", exclude_unset=True) == runtime
    assert cards.EvaluationRecord.model_validate(record).model_dump(mode="json", exclude_unset=True) == record
    # The two parts of the card the model had in one piece, each key on its side, the model named in both.
    assert set(runtime) <= set(schema.model_fields) and set(runtime) & set(record) == {"model"}
    assert record["model"] == runtime["model"]
    assert cards.split({**runtime, **record}) == (runtime, record)
    model = card.with_suffix(".npz" if "format" in runtime else ".tflite")
    assert model.is_file()
    assert cards.read_runtime(model) == runtime and cards.read_record(model) == record


def test_the_runtime_card_holds_what_the_node_reads_and_the_record_the_figures():
    card, record = read_card(LOGMEL), read_evaluation(LOGMEL)
    assert card["detector"]["threshold"] == record["evaluation"]["threshold"] == 0.99
    assert card["window_frames"] == 100 and card["features"]["n_mels"] == 40
    assert record["macs"] == 875744 and record["accuracy_test_int8"] == 0.9468468468468468
    assert not {"macs", "history", "evaluation", "training", "data"} & set(card)


@pytest.mark.parametrize(("edit", "words"), [
    (lambda c: c.pop("feature_kind"), ": feature_kind: Field required"),
    (lambda c: c.update(window_frames="100"), ': window_frames = "100": Input should be a valid integer'),
    (lambda c: c.update(detector={"threshold": 1.5}), ": detector.threshold = 1.5: Input should be less than or "
                                                      "equal to 1"),
    (lambda c: c.update(treshold=0.9), ": treshold = 0.9: Extra inputs are not permitted"),
    (lambda c: c["features"].update(n_mels=0), ": features.n_mels = 0: Input should be greater than 0"),
    (lambda c: c["features"].update(kind="mfcc"), ': features.kind = "mfcc": Input tag \'mfcc\' found using '),
    (lambda c: c.update(feature_kind="pcen"), ": feature_kind 'pcen' but features.kind 'logmel'"),
    (lambda c: c.update(window_embeddings=16), ": give the input length as window_frames or window_embeddings"),
])
def test_a_bad_runtime_card_is_one_line_naming_file_field_and_value(tmp_path, edit, words):
    shutil.copyfile(LOGMEL, tmp_path / "m.tflite")
    card = _json(LOGMEL.with_suffix(".json"))
    edit(card)
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(ModelError) as info:
        read_card(tmp_path / "m.tflite")
    msg = info.value.args[0]
    assert msg.startswith(f"{tmp_path / 'm.json'}: ") and words in msg and "\n" not in msg, msg
    assert info.value.code == "model_card"


def test_a_bad_evaluation_record_names_its_file(tmp_path):
    shutil.copyfile(LOGMEL.with_suffix(".json"), tmp_path / "m.json")
    (tmp_path / "m.eval.json").write_text(json.dumps({"model": "tiny_logmel", "macs": "many"}))
    with pytest.raises(ModelError, match=r"m\.eval\.json: macs = \"many\": Input should be a valid integer"):
        read_evaluation(tmp_path / "m.tflite")
    (tmp_path / "m.eval.json").write_text(json.dumps({"model": "tiny_logmel", "acuracy": 0.9}))
    with pytest.raises(ModelError, match=r"m\.eval\.json: acuracy = 0\.9: Extra inputs are not permitted"):
        read_evaluation(tmp_path / "m.tflite")
    assert read_card(tmp_path / "m.tflite")["model"] == "tiny_logmel"  # the node never reads the record
    (tmp_path / "m.eval.json").unlink()
    assert read_evaluation(tmp_path / "m.tflite") == {}


def test_a_card_in_one_piece_reads_as_its_runtime_part(tmp_path):
    whole = _one_piece(LOGMEL.with_suffix(".json"))
    (tmp_path / "m.json").write_text(json.dumps(whole))
    assert read_card(tmp_path / "m.tflite") == _json(LOGMEL.with_suffix(".json"))
    assert read_evaluation(tmp_path / "m.tflite") == _json(LOGMEL.with_suffix(".eval.json"))


def _run_card() -> dict:
    """A training run's card.json as the pipeline builds it, from the shipped cards."""
    tiny = _one_piece(LOGMEL.with_suffix(".json"))
    ev = tiny.pop("evaluation")
    for k in ("phrase", "detector", "shipped_as", "chosen_from", "training", "data"):
        tiny.pop(k)
    models = {"tiny_logmel": tiny}
    for name in ("verifier", "commands"):
        m = _one_piece(ROOT / "cloud" / "models" / f"{name}.json")
        m.pop("phrase"), m.pop("training")
        models[name] = m
    v2 = _one_piece(ROOT / "gate" / "models" / "second_stage.json")
    v2.pop("phrase"), v2.pop("training"), v2.pop("shipped_as")
    models["verifier_v2"] = v2
    shipped = _json(LOGMEL.with_suffix(".eval.json"))
    return {"phrase": "hey jarvis", "models": models, "evaluation": {"tiny_logmel": ev},
            "training": shipped["training"], "data": shipped["data"]}


def test_write_cards_writes_the_run_card_and_both_files_of_every_model(tmp_path):
    run = _run_card()
    cards.write_cards(tmp_path, run)
    assert _json(tmp_path / "card.json") == run
    for name, m in run["models"].items():
        runtime, record = _json(tmp_path / f"{name}.json"), _json(tmp_path / f"{name}.eval.json")
        cards.runtime_schema(runtime).model_validate(runtime)
        cards.EvaluationRecord.model_validate(record)
        assert {**runtime, **record} == {"phrase": "hey jarvis", **m, **({"evaluation": run["evaluation"][name],
                                         "detector": {"threshold": 0.99}} if name in run["evaluation"] else {})}
    assert _json(tmp_path / "tiny_logmel.json") == _json(LOGMEL.with_suffix(".json"))
    assert _json(tmp_path / "verifier.json") == _json(ROOT / "cloud" / "models" / "verifier.json")


def test_write_cards_refuses_a_model_card_the_node_could_not_read(tmp_path):
    run = _run_card()
    run["models"]["verifier"]["threshold"] = 0.0
    with pytest.raises(cards.CardError, match=r"verifier\.json: threshold = 0\.0: Input should be greater than 0"):
        cards.write_cards(tmp_path, run)
    assert not (tmp_path / "verifier.json").exists() and not (tmp_path / "verifier.eval.json").exists()


def test_ship_copies_each_model_with_its_runtime_card_and_record(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = _run_card()
    run["models"]["tiny_logmel_distilled"] = {**run["models"]["tiny_logmel"], "model": "tiny_logmel_distilled"}
    ev = run["evaluation"]["tiny_logmel"]
    run["evaluation"]["tiny_logmel_distilled"] = {**ev, "tiny": {**ev["tiny"], "miss_rate": 0.5}}  # misses more
    cards.write_cards(run_dir, run)
    for name, src in (("tiny_logmel", LOGMEL), ("tiny_logmel_distilled", LOGMEL),
                      ("verifier", ROOT / "cloud/models/verifier.tflite"),
                      ("commands", ROOT / "cloud/models/commands.tflite"),
                      ("verifier_v2", ROOT / "gate/models/second_stage.tflite")):
        shutil.copyfile(src, run_dir / f"{name}.tflite")
    gate_models, cloud_models = tmp_path / "gate", tmp_path / "cloud"
    shipped = ship.ship(run_dir, gate_models, cloud_models)
    assert sorted(shipped) == ["commands", "tiny_logmel", "verifier", "verifier_v2"]
    for dst in ("gate/kws_logmel", "gate/second_stage", "cloud/verifier", "cloud/commands"):
        got, shipped_from = tmp_path / dst, ROOT / dst.replace("/", "/models/")
        for suffix in (".json", ".tflite"):
            assert (got.with_suffix(suffix)).read_bytes() == shipped_from.with_suffix(suffix).read_bytes(), dst
        # The shipped models came from runs of their own; this one's training cost goes with each.
        record = _json(shipped_from.with_suffix(cards.EVAL_SUFFIX))
        assert _json(got.with_suffix(cards.EVAL_SUFFIX)) == {**record, "training": run["training"]}, dst


def test_the_command_recogniser_needs_the_classes_in_its_card(tmp_path):
    from cloud.commands import DEFAULT_COMMANDS, CommandRecognizer

    shutil.copyfile(DEFAULT_COMMANDS, tmp_path / "c.tflite")
    card = _json(DEFAULT_COMMANDS.with_suffix(".json"))
    card.pop("classes")
    (tmp_path / "c.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"c\.json: classes: missing"):
        CommandRecognizer(model_path=tmp_path / "c.tflite")
    card["classes"] = "on off"
    (tmp_path / "c.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r'c\.json: classes = "on off": Input should be a valid list'):
        CommandRecognizer(model_path=tmp_path / "c.tflite")
