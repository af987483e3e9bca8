"""`gate-cloud`: the cloud side's command line (`train`, `serve`, `federate`, `keygen`, `release`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cloud.service.cli import add_serve_parser, serve
from gate_core import __version__
from gate_core.cliutil import Parser, boundary, fail, input_dir, input_file, number, output_dir, parse, read_json


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="gate-cloud", description="gate's cloud side: verifier service and training.")
    p.add_argument("--version", action="version", version=f"gate {__version__}")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("train", help="synthesise data, train the tiny KWS, verifier and command recogniser, "
                                     "quantize, evaluate, write models and model cards")
    t.add_argument("--recipe", required=True, type=input_file,
                   help="training recipe YAML (datasets/recipes/hey_jarvis.yaml)")
    t.add_argument("--out", required=True, type=output_dir, help="output directory for models and card.json")
    t.add_argument("--teacher", action="store_true",
                   help="also train the tiny model on the verifier's soft labels (distillation) and report both")
    t.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    t.add_argument("--scene-minutes", type=number(lo=0, lo_open=True, hi=24 * 60), default=None,
                   help="override the evaluation scene length")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation scenes")
    t.add_argument("--threads", type=number(lo=1, hi=64, integer=True), default=2,
                   help="TensorFlow threads (the machine may be shared)")
    t.add_argument("--cache-dir", type=output_dir, default=None,
                   help="keep synthesised speech here for reruns (default: --out)")
    t.add_argument("--kinds", default=None,
                   help="comma-separated feature kinds for the tiny model (default: the recipe's feature_kinds)")
    t.add_argument("--only", default=None,
                   help="comma-separated subset of verifier,commands,tiny to train (default: all three); "
                        "'eval' alone re-scores the tiny models already in --out (the shipped ones when --out "
                        "holds no run) on the evaluation scenes")
    t.add_argument("--ship", action="store_true",
                   help="copy the models into gate/models/ and cloud/models/ (the shipped defaults) when done")
    s = sub.add_parser("ship", help="copy a finished run's models into gate/models/ and cloud/models/")
    s.add_argument("run_dir", type=input_dir, help="the --out directory of a `gate-cloud train` run")
    f = sub.add_parser("federate", help="simulate a fleet that fine-tunes the tiny KWS on Flower (its own speakers, "
                                        "rooms and labels from the cascade), quantize, gate on dev scenes, release")
    f.add_argument("--nodes", type=number(lo=2, hi=200, integer=True), default=20, help="simulated nodes (>= 2)")
    f.add_argument("--rounds", type=number(lo=1, hi=100, integer=True), default=5, help="Flower rounds")
    f.add_argument("--out", required=True, type=output_dir, help="output directory (federated.json, models)")
    f.add_argument("--recipe", type=input_file, default=Path("datasets/recipes/hey_jarvis.yaml"),
                   help="training recipe: phrase, engines and the held-out voices the nodes speak with")
    f.add_argument("--mu", type=number(lo=0, hi=10), default=0.01, help="FedProx proximal weight (0 = FedAvg)")
    f.add_argument("--layers", choices=["pw+fc", "fc"], default="pw+fc",
                   help="what the nodes train: the last pointwise convolution and the classifier, or the classifier")
    f.add_argument("--seed", type=int, default=None,
                   help="the fleet's seed: its nodes' rooms, speakers, rates, pitches, utterances and scenes "
                        "(default: the recipe's)")
    f.add_argument("--epochs", type=number(lo=1, hi=1000, integer=True), default=None,
                   help="local epochs per round (default 12)")
    f.add_argument("--lr", type=number(lo=0, lo_open=True, hi=1), default=None,
                   help="local Adam learning rate (default 2e-3)")
    f.add_argument("--positive-share", type=number(lo=0, lo_open=True, hi=0.99), default=None,
                   help="the positives' share of the local loss, below 1 (default 0.5)")
    f.add_argument("--hard-negative-repeat", type=number(lo=1, hi=100, integer=True), default=None,
                   help="each labelled negative is seen this many times an epoch, a background window once (default 1)")
    f.add_argument("--label-threshold", type=number(lo=0, hi=1), default=None,
                   help="also upload candidates above this posterior for the verifier to label (default 0.8; "
                        "1 = the node's own detections only)")
    f.add_argument("--keep-threshold", action="store_true",
                   help="score the candidate at the base model's threshold instead of the one its dev scenes choose")
    f.add_argument("--collect-minutes", type=number(lo=0, lo_open=True, hi=240), default=None,
                   help="each node's collection scene length (default 10)")
    f.add_argument("--heldout-minutes", type=number(lo=0, lo_open=True, hi=240), default=None,
                   help="each node's held-out scene length (default 6)")
    f.add_argument("--cache-dir", type=output_dir, default=None,
                   help="keep synthesised speech here for reruns (default: out/cache/federated)")
    f.add_argument("--key", type=input_file, default=None,
                   help="release.key: sign a model that passes the dev gate (written as out/release/release.json)")
    f.add_argument("--broker", action="append", type=host_port, default=None, metavar="HOST:PORT",
                   help="with --key: also publish the signed release, retained, to the fleet on this broker")
    k = sub.add_parser("keygen", help="make the Ed25519 key pair that signs model releases (release.key, 0600; "
                                      "release.pub for the nodes' kws.ota.public_key)")
    k.add_argument("--out", required=True, type=output_dir, help="directory for release.key and release.pub")
    r = sub.add_parser("release", help="sign a .tflite and its card and publish it, retained, to the fleet or one node")
    r.add_argument("model", type=input_file, help="the int8 .tflite to release")
    r.add_argument("--card", required=True, type=input_file, help="its model card (JSON object)")
    r.add_argument("--key", required=True, type=input_file, help="release.key from gate-cloud keygen")
    r.add_argument("--node", default=None, help="one node's id (default: the whole fleet)")
    r.add_argument("--broker", action="append", type=host_port, default=None, metavar="HOST:PORT",
                   help="broker to publish on (repeatable; default 127.0.0.1:1883)")
    r.add_argument("--prefix", default="gate", help="topic prefix (the nodes' mqtt.topic_prefix)")
    r.add_argument("--username", default=None, help="broker user (the cloud user of deploy/mosquitto)")
    r.add_argument("--password-file", type=input_file, default=None, help="file holding that user's password")
    r.add_argument("--wait-s", type=number(lo=0, hi=3600), default=0.0,
                   help="then print the nodes' acks (JSON lines) for this long, s")
    add_serve_parser(sub)
    return p


def host_port(text: str) -> tuple[str, int]:
    """An argparse ``type``: HOST:PORT with a port in 1-65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (port 1-65535)")
    return host, int(port)


def _keygen(args: argparse.Namespace) -> int:
    from cloud.release import keygen

    priv, pub = keygen(args.out)
    print(f"wrote {priv} (keep it on the release host, mode 0600) and {pub} (give it to every node)")
    return 0


def _release(args: argparse.Namespace) -> int:
    from cloud.release import AckCollector, build_release, publish_release
    from gate.kws.interpreter import ModelError, TFLiteModel
    from gate_core.release import load_private_key, sha256_hex

    key = load_private_key(args.key)
    card = read_json(args.card, "model card")
    if not isinstance(card, dict):
        fail(f"{args.card}: a model card is a JSON object, not {type(card).__name__}", code="input_invalid")
    model = args.model.read_bytes()
    if not model:
        fail(f"{args.model}: empty model file", code="input_invalid")
    try:
        TFLiteModel(model_content=model)  # a file no node could load is refused before anything is published
    except ModelError as exc:
        fail(f"{args.model}: {exc.args[0].removeprefix('<model bytes>: ')}", code="input_invalid")
    payload = build_release(model, card, key, node=args.node)
    password = args.password_file.read_text().rstrip("\r\n") if args.password_file else None
    sha = sha256_hex(model)
    for host, port in args.broker or [("127.0.0.1", 1883)]:
        collector = AckCollector(host, port, prefix=args.prefix, username=args.username, password=password)
        with collector:
            topic = publish_release(host, port, payload, node=args.node, prefix=args.prefix,
                                    username=args.username, password=password)
            print(json.dumps({"broker": f"{host}:{port}", "topic": topic, "sha256": sha, "bytes": len(payload)}))
            if args.wait_s:
                import time

                time.sleep(args.wait_s)
                for _node, (_, ack) in sorted(collector.acks.items()):
                    if ack.sha256 == sha:
                        print(ack.to_json().decode())
    return 0


def _train(args: argparse.Namespace) -> int:
    from cloud.train.pipeline import PARTS, Options, run
    from cloud.train.recipe import FEATURE_KINDS, load_recipe

    only = tuple(v.strip() for v in args.only.split(",") if v.strip()) if args.only else None
    if only is not None:
        unknown = sorted(set(only) - set(PARTS) - {"eval"})
        if unknown or not only or ("eval" in only and len(only) > 1):
            fail(f"--only: {args.only!r}: give 'eval' alone or a comma list of {', '.join(PARTS)}")
    recipe = load_recipe(args.recipe)
    if args.seed is not None:
        recipe = recipe.model_copy(update={"seed": args.seed})
    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        allowed = FEATURE_KINDS
        if not kinds or set(kinds) - set(allowed):
            fail(f"--kinds: {args.kinds!r}: give a comma list of {', '.join(allowed)}")
        recipe = recipe.model_copy(update={"feature_kinds": kinds})
    card = run(recipe, args.out, Options(teacher=args.teacher, scene_minutes=args.scene_minutes,
                                         threads=args.threads, evaluate=not args.no_eval, cache_dir=args.cache_dir,
                                         only=only))
    summary = {name: {k: m.get(k) for k in ("params", "macs", "size_bytes_int8", "size_bytes", "accuracy_test_float",
                                            "accuracy_test_int8") if k in m}
               for name, m in card["models"].items()}
    for name, ev in card.get("evaluation", {}).items():
        if isinstance(ev, dict) and "tiny" in ev:
            summary.setdefault(name, {})["eval"] = {k: v for k, v in ev.items() if k.startswith("tiny")}
    summary["training"] = card.get("training")  # a run dir assembled by hand may have none
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/card.json", file=sys.stderr)
    if args.ship:
        return _ship(args.out)
    return 0


def _signed_release(args: argparse.Namespace):
    """The federated run's release step: sign (cloud.release), write, publish when a broker is named."""
    from cloud.release import build_release, publish_release
    from gate_core.release import load_private_key, sha256_hex

    key = load_private_key(args.key)

    def release(model: bytes, card: dict) -> dict:
        payload = build_release(model, card, key)
        path = args.out / "release" / "release.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        topics = [publish_release(host, port, payload) for host, port in args.broker or []]
        return {"path": str(path), "sha256": sha256_hex(model), "bytes": len(payload), "published": topics}

    return release


def federate_sizes(args: argparse.Namespace):
    """The fleet's sizes and training settings: the defaults (cloud.federated.fleet.Sizes) with what the
    federate subcommand was given."""
    from dataclasses import replace

    from cloud.federated.fleet import Sizes

    given = {k: getattr(args, k) for k in ("collect_minutes", "heldout_minutes", "epochs", "lr", "positive_share",
                                           "hard_negative_repeat", "label_threshold")}
    sizes = replace(Sizes(), **{k: v for k, v in given.items() if v is not None})
    return replace(sizes, threshold_steps=(1.0,)) if args.keep_threshold else sizes


def _federate(args: argparse.Namespace) -> int:
    from cloud.federated.fleet import federate
    from cloud.train.recipe import load_recipe

    sizes = federate_sizes(args)
    report = federate(load_recipe(args.recipe), args.out, nodes=args.nodes, rounds=args.rounds, mu=args.mu,
                      seed=args.seed,
                      trainable=args.layers, sizes=sizes, cache_dir=args.cache_dir or Path("out/cache/federated"),
                      release=_signed_release(args) if args.key else None)
    print(json.dumps({"overall": report["overall"], "release_gate": report["release_gate"],
                      "release": report["release"], "total_s": report["total_s"]}, indent=2))
    print(f"wrote {args.out}/federated.json", file=sys.stderr)
    return 0


def _ship(run_dir: Path) -> int:
    from cloud.train.ship import ship

    for name, dst in ship(run_dir).items():
        print(f"shipped {name} -> {dst}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    commands = {"train": _train, "ship": lambda a: _ship(a.run_dir), "serve": serve, "federate": _federate,
                "keygen": _keygen, "release": _release}
    return boundary(f"gate-cloud {args.command}", lambda: commands[args.command](args))

if __name__ == "__main__":
    raise SystemExit(main())
