"""What the node, the sensors and the cloud share: audio frames, wire schemas (segments, verdicts, the
ledger they carry), errors, strict settings models, the vocabulary, the detection metric and the
detector it sweeps, TLS and cloud settings, and the command-line helpers. It imports nothing from
gate/, sensors/ or cloud/."""

__version__ = "0.1.0"
