"""Remote configuration: the node's end of ``<prefix>/<node>/config``.

Every message on that topic is answered with a :class:`ConfigAck` for ``<prefix>/<node>/config/ack``:
accepted or not, with the reason. The node's own callback decides and applies; a callback that raises
is answered as a rejection with the exception's text, and the running config is whatever the callback
left it. A node without a callback rejects every update.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import ValidationError

from gate_core.wire import ConfigAck, ConfigUpdate

ConfigHandler = Callable[[ConfigUpdate], ConfigAck]


class RemoteConfig:
    """Turns a config message into the ack to send; counts the messages that failed validation."""

    def __init__(self, node_id: str, on_config: ConfigHandler | None) -> None:
        self.node_id = node_id
        self.on_config = on_config
        self.malformed = 0

    def answer(self, payload: bytes) -> ConfigAck:
        try:
            update = ConfigUpdate.model_validate_json(payload)
        except ValidationError as exc:
            self.malformed += 1
            return self._refuse(request_id(payload), f"malformed update: {first_error(exc)}")
        if self.on_config is None:
            return self._refuse(update.request_id, "remote configuration is disabled on this node")
        try:
            return self.on_config(update)
        except Exception as exc:
            return self._refuse(update.request_id, str(exc)[:1000] or type(exc).__name__)

    def _refuse(self, rid: str | None, reason: str) -> ConfigAck:
        return ConfigAck(request_id=rid, node_id=self.node_id, accepted=False, reason=reason)


def first_error(exc: ValidationError) -> str:
    """The first validation error as ``field.path: message``."""
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def request_id(payload: bytes) -> str | None:
    """The ``request_id`` of a message that is not a valid update, when it has a usable one."""
    try:
        rid = json.loads(payload).get("request_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 64 else None
