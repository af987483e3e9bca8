"""gate over the Wyoming protocol (Home Assistant's voice satellites and wake-word services).

- :mod:`gate.wyoming.server`: ``gate-node wyoming --uri tcp://0.0.0.0:10400`` serves the wake-word
  protocol. Each connection gets its own cascade (analog gate, ADC, KWS, segmenter, ledger) fed
  with the client's audio converted to 16 kHz mono int16.
- :mod:`gate.wyoming.satellite`: the node (microphone or a file) streams the segment cut after each
  detection to a Wyoming server, instead of or besides MQTT.
- :mod:`gate.wyoming.audio` and :mod:`gate.wyoming.listener`: the protocol-free parts (format
  conversion, the per-stream cascade), importable without the ``wyoming`` package.

Nothing here imports ``wyoming`` or a KWS runtime at import time except server, satellite and client.
"""
