"""gate: the node side of the wake-word gating cascade."""

from gate_core import __version__  # noqa: F401  (one version for the project)
