"""``gate-data``: build training corpora and labelled scenario streams from synthetic speech.

    gate-data synth --phrase "hey jarvis" --out data/kws [--n 10000] [--seed 0]
    gate-data scenario --recipe datasets/recipes/quiet_home.yaml --out data/quiet_home
    gate-data voices            # which engines and voices are usable here
    gate-data confusables --phrase "hey jarvis"

Bad input exits 2 with one line naming what is wrong; nothing half-written is left looking done.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from gate_core.cliutil import Parser, boundary, input_file, number, output_dir, parse
from gate_core.vocabulary import WAKE_PHRASE

log = logging.getLogger("gate-data")


class _Bars:
    """tqdm bars on stderr, one per stage, created on first use."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, object] = {}

    def __call__(self, stage: str, advanced: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            unit = "sample" if stage in ("measure", "render") else "clip" if stage == "augment" else "utt"
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit=unit, unit_scale=unit == "sample",
                                          file=sys.stderr, dynamic_ncols=True, leave=True)
        bar.update(advanced)  # type: ignore[attr-defined]
        if bar.n >= total:  # type: ignore[attr-defined]
            bar.close()  # type: ignore[attr-defined]  # freeze the elapsed time at the stage's end

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()  # type: ignore[attr-defined]


def _read_word_list(path: str) -> list[str]:
    from sensors.synth.errors import DataError

    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"negatives word list {path}: cannot read ({exc.strerror or exc})",
                        code="wordlist_unreadable") from exc
    words = [ln.split("#", 1)[0].strip() for ln in lines]
    words = [w for w in words if w]
    if not words:
        raise DataError(f"negatives word list {path}: has no words", code="wordlist_empty")
    return words


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def cmd_synth(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sensors.synth.corpus import SynthConfig, synth
    from sensors.synth.errors import DataError
    from sensors.synth.recipe_io import describe_validation, load_model

    overrides: dict[str, object] = {}
    for key in ("phrase", "n", "seed", "workers", "language"):
        v = getattr(args, key)
        if v is not None:
            overrides[key] = v
    if args.engines is not None:
        overrides["engines"] = _csv(args.engines)
    if args.voices is not None:
        overrides["voices"] = _csv(args.voices)
    if args.negatives is not None:
        overrides["negatives"] = _read_word_list(args.negatives)
    if args.config:
        cfg = load_model(Path(args.config), SynthConfig, overrides=overrides)
    else:
        overrides.setdefault("phrase", WAKE_PHRASE)
        try:
            cfg = SynthConfig.model_validate(overrides)
        except ValidationError as exc:
            raise DataError(describe_validation(exc).replace("field phrase: ", "--phrase: ")) from exc
    bars = _Bars(not args.quiet)
    try:
        summary = synth(cfg, Path(args.out), force=args.force, progress=bars)
    finally:
        bars.close()
    skipped = summary["engines_skipped"]
    engines = summary["engines"]
    labels = ", ".join(f"{k} {v}" for k, v in sorted(summary["labels"].items()))
    print(f"{summary['clips']} clips in {args.out} ({labels}); "
          f"{summary['renders']} TTS renders from {summary['voices_used']} voices; engines: "
          f"{', '.join(f'{e} ({len(v)} voices)' for e, v in engines.items())}"
          + (f"; skipped: {'; '.join(skipped.values())}" if skipped else ""))
    return 0


def cmd_scenario(args: argparse.Namespace) -> int:
    from sensors.scenario import ScenarioRecipe, render
    from sensors.synth.recipe_io import load_model

    overrides: dict[str, object] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.duration_s is not None:
        overrides["duration_s"] = args.duration_s
    recipe = load_model(Path(args.recipe), ScenarioRecipe, overrides=overrides)
    bars = _Bars(not args.quiet)
    try:
        res = render(recipe, Path(args.out), force=args.force, progress=bars)
    finally:
        bars.close()
    ev = res.summary["events"]
    skipped = res.summary["engines_skipped"]
    print(f"{res.path / res.summary['audio']}: {res.summary['duration_s']:.1f} s, "
          f"{', '.join(f'{k} {v}' for k, v in ev.items() if v)}; labels in {res.path / 'labels.csv'}"
          + (f"; skipped engines: {'; '.join(skipped.values())}" if skipped else ""))
    return 0


def cmd_voices(args: argparse.Namespace) -> int:
    from sensors.synth import tts

    es = tts.discover(None, language=args.language)
    report = {"engines": {e: [v.id for v in es.voices[e]] for e in es.engines},
              "espeak_variants": list(es.variants), "skipped": es.skipped,
              "rhvoice_excluded": sorted(tts.RHVOICE_EXCLUDED)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for e in es.engines:
        print(f"{e}: {len(es.voices[e])} voices: {', '.join(v.name for v in es.voices[e])}")
    if es.variants:
        print(f"espeak variants: {len(es.variants)}: {', '.join(es.variants)}; random ones too, "
              "e.g. espeak:en-us+rv0042-s7 (recipe corpus.random_variants)")
    if "rhvoice" in es.engines:
        print(f"rhvoice never used: {', '.join(sorted(tts.RHVOICE_EXCLUDED))} "
              "(CMU ARCTIC speakers, kept out of the speech data)")
    for reason in es.skipped.values():
        print(f"skipped {reason}")
    return 0


def cmd_confusables(args: argparse.Namespace) -> int:
    from gate_core.vocabulary import normalise
    from sensors.synth import confusables
    from sensors.synth.errors import DataError

    if not normalise(args.phrase):
        raise DataError("--phrase: the wake phrase is empty", code="text_empty")
    for c in confusables.generate(args.phrase, args.n):
        print(f"{c.text}\t{c.how}\t{c.distance:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="gate-data", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="augmented one-second clips: wake phrase, confusables, other speech, noise")
    s.add_argument("--phrase", help=f"wake phrase (default {WAKE_PHRASE!r})")
    s.add_argument("--out", required=True, type=output_dir,
                   help="output directory (created; must be new or empty unless --force)")
    s.add_argument("--n", type=number(lo=1, hi=10_000_000, integer=True), help="number of clips (default 1000)")
    s.add_argument("--seed", type=int, help="random seed (default 0); same seed, same bytes")
    s.add_argument("--engines", help="comma list of espeak, mbrola, pico, rhvoice (default: every engine installed)")
    s.add_argument("--voices", help="comma list of voices, e.g. espeak:en-us+f3,mbrola:mb-us1,pico:en-GB")
    s.add_argument("--language", help="voice language prefix (default en)")
    s.add_argument("--negatives", type=input_file, help="file of extra negative words/phrases, one per line")
    s.add_argument("--config", type=input_file, help="YAML synth config (fields of SynthConfig); flags override it")
    s.add_argument("--workers", type=number(lo=1, hi=64, integer=True), help="worker processes (default 2)")
    s.add_argument("--force", action="store_true", help="replace an existing output directory")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_synth)

    c = sub.add_parser("scenario", help="a long labelled stream from a recipe")
    c.add_argument("--recipe", required=True, type=input_file,
                   help="YAML recipe, e.g. datasets/recipes/quiet_home.yaml")
    c.add_argument("--out", required=True, type=output_dir, help="output directory")
    c.add_argument("--seed", type=int, help="override the recipe's seed")
    c.add_argument("--duration-s", type=number(lo=0, lo_open=True), help="override the recipe's duration")
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_scenario)

    v = sub.add_parser("voices", help="list usable TTS engines, voices and variants")
    v.add_argument("--language", default="en")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_voices)

    f = sub.add_parser("confusables", help="print the phonetic confusables of a phrase")
    f.add_argument("--phrase", default=WAKE_PHRASE)
    f.add_argument("--n", type=number(lo=1, hi=10_000, integer=True), default=40)
    f.set_defaults(func=cmd_confusables)
    return p


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (systemd, kill, a CI timeout) unwinds like Ctrl-C, so the staging directory of an
    # unfinished dataset is removed instead of left behind.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="gate-data: %(levelname)s: %(message)s", stream=sys.stderr)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        code = boundary(f"gate-data {args.command}", lambda: args.func(args))
        if code == 130:
            print(f"gate-data {args.command}: interrupted; no output was completed", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
