"""Connecting to Ray: a running cluster when one is named, else a local one started here."""

from __future__ import annotations

import os

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or ``$RAY_ADDRESS``, set by ``ray job submit``); otherwise start a
    local cluster owned by this process. A no-op when Ray is already initialised."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs = {"num_cpus": num_cpus, "include_dashboard": False} if address == "local" else {}
    ray.init(address=address, **kwargs)
