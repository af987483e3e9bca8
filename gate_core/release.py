"""Signed model releases: the payload the cloud publishes and the node checks (docs/ota.md).

A release is one JSON object, published retained on ``<prefix>/fleet/model`` (every node) or
``<prefix>/<node>/model`` (one node)::

    {"format": "gate-release/1", "target": "fleet" | "<node id>", "version": "...",
     "created_unix": 1764763200.0, "size": 59736, "sha256": "<hex of the model bytes>",
     "card_sha256": "<hex of the canonical card bytes>", "key_id": "<16 hex: the signing key>",
     "model": "<base64 of the .tflite>", "card": {...}, "signature": "<base64 Ed25519>"}

The Ed25519 signature covers ``MAGIC``, the canonical JSON of the scalar fields above (everything
but model, card and signature), then the exact model bytes and the canonical card bytes, each
preceded by its length. The canonical card is ``json.dumps(card, sort_keys=True,
separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` in UTF-8. The node answers on
``<prefix>/<node>/model/ack`` with an :class:`Ack`. The card is the model's runtime card
(gate_core/cards.py), which the node checks before it loads the model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate_core.errors import GateError

FORMAT = "gate-release/1"
MAGIC = b"gate-release/1\n"
FLEET = "fleet"
_LEVEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
SCALARS = ("format", "target", "version", "created_unix", "size", "sha256", "card_sha256", "key_id")


class ReleaseError(GateError):
    """A release that is refused; ``code`` is the stable reason, the message one line for the ack."""

    code = "release_invalid"


class ReleaseKeyError(GateError):
    code = "release_key"


# ------------------------------------------------------------------------------------------ topics


def model_topic(prefix: str = "gate", node: str | None = None) -> str:
    """Where releases are published: ``<prefix>/fleet/model`` or ``<prefix>/<node>/model``."""
    for value in (prefix, node or FLEET):
        if not _LEVEL.fullmatch(value):
            raise ReleaseError(f"{value!r} is not a valid topic level", code="release_topic")
    if node == FLEET:
        raise ReleaseError(f"no node may be called {FLEET!r}: that level carries fleet releases", code="release_topic")
    return f"{prefix}/{node or FLEET}/model"


def ack_topic(prefix: str, node: str) -> str:
    return model_topic(prefix, node) + "/ack"


def ack_filter(prefix: str = "gate") -> str:
    return f"{prefix}/+/model/ack"


# ------------------------------------------------------------------------------------- canonical


def canonical_card(card: Any) -> bytes:
    if not isinstance(card, dict):
        raise ReleaseError(f"the card must be a JSON object, not {type(card).__name__}", code="release_card")
    try:
        return json.dumps(card, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (ValueError, TypeError) as exc:
        raise ReleaseError(f"the card is not plain JSON ({exc})", code="release_card") from None


def signed_message(header: dict[str, Any], model: bytes, card_bytes: bytes) -> bytes:
    """The exact bytes the signature covers."""
    head = json.dumps({k: header[k] for k in SCALARS}, sort_keys=True, separators=(",", ":")).encode()
    out = bytearray(MAGIC)
    for part in (head, model, card_bytes):
        out += struct.pack(">Q", len(part)) + part
    return bytes(out)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------ keys


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - an extra not installed
        raise GateError("signed releases need the 'cryptography' package (pip install 'cryptography>=42')",
                        code="release_crypto") from None
    return serialization, ed25519, InvalidSignature


def key_id(public_key) -> str:
    serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)[:16]


def load_private_key(path: str | Path):
    """An Ed25519 private key from a PEM (PKCS#8) file; one-line ReleaseKeyError naming the file otherwise."""
    serialization, ed25519, _ = _crypto()
    data = _read_key(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ReleaseKeyError(f"{path}: not an unencrypted PEM private key ({_first_line(exc)})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ReleaseKeyError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_key(path: str | Path):
    serialization, ed25519, _ = _crypto()
    data = _read_key(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ReleaseKeyError(f"{path}: not a PEM public key ({_first_line(exc)})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ReleaseKeyError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


def _read_key(path: str | Path) -> bytes:
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ReleaseKeyError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise ReleaseKeyError(f"{path}: is a directory, not a key file") from None
    except OSError as exc:
        raise ReleaseKeyError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > 64 * 1024:
        raise ReleaseKeyError(f"{path}: {len(data)} B is not a key file")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__


# --------------------------------------------------------------------------------------- payload


def encode(model: bytes, card: dict, private_key, *, target: str = FLEET, version: str, created_unix: float) -> bytes:
    """The signed release payload (UTF-8 JSON)."""
    card_bytes = canonical_card(card)
    header = {"format": FORMAT, "target": target, "version": str(version), "created_unix": float(created_unix),
              "size": len(model), "sha256": sha256_hex(model), "card_sha256": sha256_hex(card_bytes),
              "key_id": key_id(private_key.public_key())}
    sig = private_key.sign(signed_message(header, model, card_bytes))
    body = {**header, "model": base64.b64encode(model).decode("ascii"), "card": json.loads(card_bytes),
            "signature": base64.b64encode(sig).decode("ascii")}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Release:
    """A release whose signature and hashes have been checked."""

    target: str
    version: str
    created_unix: float
    sha256: str
    model: bytes
    card: dict
    card_sha256: str

    @property
    def release_id(self) -> str:
        """One release: its model and its card (the same model may ship with another threshold)."""
        return sha256_hex(f"{self.sha256}:{self.card_sha256}".encode())[:32]


def decode(payload: bytes, public_key, *, node: str, max_bytes: int | None = None) -> Release:
    """Parse and check a payload for ``node``; ReleaseError with a one-line reason otherwise.

    Order: well-formed JSON with every field -> addressed to this node or the fleet -> model and card
    hashes -> signature (by the trusted key) -> size against ``max_bytes``. The model itself is not
    loaded here (see gate.ota)."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReleaseError(f"malformed release: not JSON ({_first_line(exc)}; truncated?)",
                           code="release_malformed") from None
    if not isinstance(body, dict):
        raise ReleaseError("malformed release: not a JSON object", code="release_malformed")
    missing = [k for k in (*SCALARS, "model", "card", "signature") if k not in body]
    if missing:
        raise ReleaseError(f"malformed release: missing {', '.join(missing)}", code="release_malformed")
    if body["format"] != FORMAT:
        raise ReleaseError(f"unsupported release format {str(body['format'])[:40]!r} (this node reads {FORMAT})",
                           code="release_format")
    types = {"target": str, "version": str, "created_unix": (int, float), "size": int, "sha256": str,
             "card_sha256": str, "key_id": str, "model": str, "signature": str, "card": dict}
    for k, t in types.items():
        if not isinstance(body[k], t) or isinstance(body[k], bool):
            raise ReleaseError(f"malformed release: {k} has the wrong type", code="release_malformed")
    if not (_HEX64.fullmatch(body["sha256"]) and _HEX64.fullmatch(body["card_sha256"])):
        raise ReleaseError("malformed release: sha256 fields are not 64 hex digits", code="release_malformed")
    if body["target"] not in (FLEET, node):
        raise ReleaseError(f"release addressed to {body['target'][:64]!r}, not to this node",
                           code="release_target")
    try:
        model = base64.b64decode(body["model"], validate=True)
        sig = base64.b64decode(body["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseError("malformed release: model or signature is not base64", code="release_malformed") from None
    card_bytes = canonical_card(body["card"])
    if len(model) != body["size"]:
        raise ReleaseError(f"truncated model: {len(model)} B received, {body['size']} B announced",
                           code="release_truncated")
    got = sha256_hex(model)
    if got != body["sha256"]:
        raise ReleaseError(f"model sha256 mismatch: got {got[:12]}, announced {body['sha256'][:12]}",
                           code="release_hash")
    if sha256_hex(card_bytes) != body["card_sha256"]:
        raise ReleaseError("card sha256 mismatch", code="release_hash")
    _, _, invalid = _crypto()
    try:
        public_key.verify(sig, signed_message(body, model, card_bytes))
    except invalid:
        trusted = key_id(public_key)
        who = "" if body["key_id"] == trusted else f" (signed by key {body['key_id'][:16]}, trusted {trusted})"
        raise ReleaseError(f"bad signature{who}", code="release_signature") from None
    if max_bytes is not None and len(model) > max_bytes:
        raise ReleaseError(f"model too large: {len(model)} B over the profile's {max_bytes} B limit",
                           code="release_too_large")
    return Release(target=body["target"], version=body["version"], created_unix=float(body["created_unix"]),
                   sha256=got, model=model, card=body["card"], card_sha256=body["card_sha256"])


# ------------------------------------------------------------------------------------------ acks


@dataclass(frozen=True, slots=True)
class Ack:
    """The node's answer to one release: ``accepted`` with the sha256 it now runs, or the reason it refused."""

    node_id: str
    accepted: bool
    sha256: str | None  # of the release's model (None when the payload could not be read)
    active_sha256: str | None  # the model the node runs after this release
    reason: str | None = None  # one line; None when accepted
    code: str | None = None
    version: str | None = None

    def to_json(self) -> bytes:
        return json.dumps({k: getattr(self, k) for k in self.__slots__}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> Ack:
        d = json.loads(payload)
        return cls(**{k: d.get(k) for k in cls.__slots__})
