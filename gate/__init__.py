"""gate: the node side of the wake-word gating cascade."""

__version__ = "0.1.0"
