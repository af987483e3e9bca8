"""TLS towards the broker: the same settings for a node and for the cloud service."""

from __future__ import annotations

from pydantic import Field

from gate_core.strict import Strict


class TlsConfig(Strict):
    """TLS towards the broker."""

    enabled: bool = Field(False, description="Connect with TLS (implied by an mqtts:// broker URL)")
    ca_file: str | None = Field(None, description="CA certificate that signed the broker's certificate (PEM)")
    cert_file: str | None = Field(None, description="This node's client certificate (PEM), for mutual TLS")
    key_file: str | None = Field(None, description="This node's client key (PEM), for mutual TLS")
