"""Short labelled scenarios and settings for the replay, report and tune tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import soundfile as sf
import yaml
from kws_standin import STANDIN

import gate

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "datasets" / "demo"


def slice_demo(out: Path, start_s: float = 100.0, seconds: float = 25.0) -> Path:
    """``seconds`` of the bundled demo from ``start_s`` as a scenario directory, with the labels that
    lie inside it. The default stretch holds three wake words and speech the stand-in KWS fires on."""
    out.mkdir(parents=True, exist_ok=True)
    sr = 16000
    x, _ = sf.read(DEMO / "stream.flac", dtype="int16", start=int(start_s * sr), frames=int(seconds * sr))
    sf.write(out / "stream.flac", x, sr)
    (out / "scenario.json").write_text(json.dumps({"audio": "stream.flac", "duration_s": seconds,
                                                   "sliced_from": [str(DEMO), start_s]}))
    with (DEMO / "labels.csv").open(newline="") as f, (out / "labels.csv").open("w", newline="") as g:
        rows = csv.DictReader(f)
        w = csv.DictWriter(g, fieldnames=rows.fieldnames, lineterminator="\n")
        w.writeheader()
        for r in rows:
            a, b = float(r["start_s"]) - start_s, float(r["end_s"]) - start_s
            if a >= 0 and b <= seconds:
                w.writerow({**r, "start_s": f"{a:.7f}", "end_s": f"{b:.7f}",
                            "start_sample": int(r["start_sample"]) - int(start_s * sr),
                            "end_sample": int(r["end_sample"]) - int(start_s * sr)})
    return out


def standin_config(path: Path, **analog) -> Path:
    """A thresholds file that runs the loudness stand-in KWS, so segments are cut whatever model ships."""
    data = {"kws": {"model_path": str(STANDIN), "threshold": 0.5}}
    if analog:
        data["analog"] = analog
    path.write_text(yaml.safe_dump(data))
    return path


def mcu_without_startup(tmp: Path) -> Path:
    """mcu-analog with adc.startup_s = 0: start-up is simulated, so only then does a re-priced report
    equal a fresh replay exactly (the report's notes say so otherwise)."""
    prof = yaml.safe_load((Path(gate.__file__).parent / "profiles" / "mcu-analog.yaml").read_text())
    prof["stages"]["adc"]["startup_s"] = 0.0
    p = tmp / "mcu-analog-nostartup.yaml"
    p.write_text(yaml.safe_dump(prof))
    return p
