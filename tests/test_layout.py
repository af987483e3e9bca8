"""Which package may import which: gate_core is shared by all, sensors/ and the cloud service stand on it
alone, and tests share helpers and fixtures, never each other's test modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The cloud's service side may use the node package's shared feature code and model loading only; training
# and evaluation (cloud/train, cloud/federated, cloud/compare.py, cloud/crossengine.py, cloud/score_models.py)
# also run the node's keyword spotter, which is what they train and measure. `gate-cloud serve --config` reads the project's one
# thresholds file through the node's loader, so every section of it is checked the same way.
CLOUD_SERVICE_MAY_USE = {"gate.kws.featurize", "gate.kws.interpreter", "gate.kws.second_stage", "gate.kws.embedding",
                         "gate.features"}
CLOUD_EVALUATION = ("cloud/train/", "cloud/federated/", "cloud/compare.py", "cloud/crossengine.py",
                    "cloud/score_models.py")
CLOUD_EXCEPTIONS = {"cloud/service/cli.py": {"gate.config"}}


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute imports; ``from a import b`` counts as a.b when a.b is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            for a in node.names:
                if (ROOT / Path(*node.module.split("."), a.name)).with_suffix(".py").is_file():
                    out.add(f"{node.module}.{a.name}")
    return out


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def of(mods: set[str], *packages: str) -> set[str]:
    return {m for m in mods if m.split(".")[0] in packages}


def test_imports_are_seen():
    # the scanner itself: a file known to import both kinds of module
    mods = imports(ROOT / "gate" / "node.py")
    assert "gate.config" in mods and "gate_core.wire" in mods


def test_gate_core_stands_alone():
    bad = {str(p.relative_to(ROOT)): of(imports(p), "gate", "sensors", "cloud") for p in sources("gate_core")}
    assert not {k: v for k, v in bad.items() if v}


def test_sensors_use_only_gate_core():
    bad = {str(p.relative_to(ROOT)): of(imports(p), "gate", "cloud") for p in sources("sensors")}
    assert not {k: v for k, v in bad.items() if v}


def test_the_node_does_not_import_the_cloud():
    bad = {str(p.relative_to(ROOT)): of(imports(p), "cloud") for p in sources("gate")}
    assert not {k: v for k, v in bad.items() if v}


def test_the_cloud_service_uses_only_shared_parts_of_the_node_package():
    bad = {}
    for p in sources("cloud"):
        rel = p.relative_to(ROOT).as_posix()
        if rel.startswith(CLOUD_EVALUATION):
            continue
        allowed = CLOUD_SERVICE_MAY_USE | CLOUD_EXCEPTIONS.get(rel, set())
        extra = {m for m in of(imports(p), "gate") if m not in allowed}
        if extra:
            bad[rel] = extra
    assert not bad


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_another(path):
    assert not {m for m in imports(path) if m.split(".")[0].startswith("test_")}
