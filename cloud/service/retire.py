"""Scaling down without stranding segments.

mosquitto 2.0 keeps routing a shared group's share of new segments to a member whose session is
offline, for as long as the session lives. Workers keep their session on purpose (a restarted
worker resumes it), so when `serve` starts with fewer workers than the last run under the same
client-id prefix, the surplus indices' sessions would silently collect segments. The high-water
mark of worker indices per (group, prefix) is kept in the store; at start-up each surplus index is
taken over, unsubscribed, emptied through the normal handler and ended.
"""

from __future__ import annotations

import logging
import threading

from cloud.service.models import CloudModels, load_models
from cloud.service.worker import Worker
from cloud.store import open_store
from gate_core.cloud_config import CloudConfig

log = logging.getLogger(__name__)


def high_water_key(cfg: CloudConfig) -> str:
    return f"workers:{cfg.group}:{cfg.effective_client_id_prefix}"


def retire_stale(cfg: CloudConfig, *, models: CloudModels | None = None) -> int:
    """Retire worker indices >= ``cfg.workers`` left by an earlier run; returns how many were retired."""
    store = open_store(cfg.db_url)
    try:
        key = high_water_key(cfg)
        high = int(store.get_meta(key) or 0)
        stale = range(cfg.workers, high)
        if stale:
            models = models or load_models(cfg)
            never = threading.Event()
            for index in stale:
                log.info("retiring worker index %d of %s (an earlier run had %d workers)",
                         index, cfg.effective_client_id_prefix, high)
                Worker(cfg, index=index, models=models, store=store, retire=True).retire(never)
        store.set_meta(key, str(max(cfg.workers, 0)))
        return len(stale)
    finally:
        store.close()
