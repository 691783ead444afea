"""Which fleet a model URI names, pinned to one version, and where each asset's ensemble lies.

``raysys serve`` and ``raysys predict --asset`` accept a fleet directory (``fleet.json``) or a registered
fleet (``models:/raysys-fleet@champion``, ``models:/raysys-fleet/3``); :func:`fleet_source` tells them from
a single ensemble and resolves an alias to its version once, so every replica serves one fleet version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysys.fleet.manifest import FleetManifest, read_manifest
from raysys.layout import FLEET_MANIFEST


class UnknownAssetError(ValueError):
    """A request named an asset the fleet has no served model for (HTTP 404; exit code 2 on the command line)."""


@dataclass(frozen=True)
class FleetSource:
    """A pinned fleet.

    Args:
        requested: The URI or directory as given.
        manifest: The fleet's manifest (that version's).
        directory: The local fleet directory (asset paths are relative to it), or None for a registered fleet.
        name: Registered model name (None for a directory).
        version: Registry version, or ``local-<digest of fleet.json>``.
        alias: The alias that was resolved, if any.
    """

    requested: str
    manifest: FleetManifest
    directory: str | None
    name: str | None
    version: str
    alias: str | None = None

    def asset_uri(self, asset_id: str) -> str:
        """Where asset ``asset_id``'s served ensemble lies (a directory or a ``runs:/`` URI).

        Raises:
            UnknownAssetError: no such asset, or it has no served model (failed, or failed a gate), naming
                it and why.
        """
        entry = self.manifest.assets.get(asset_id)
        if entry is None:
            raise UnknownAssetError(f"unknown asset {asset_id!r}: fleet {self.name or self.requested} version "
                                    f"{self.version} has no such asset ({len(self.manifest.assets)} assets)")
        if not entry.servable:
            raise UnknownAssetError(f"asset {asset_id!r} has no served model in fleet {self.name or self.requested} "
                                    f"version {self.version}: {entry.status} ({entry.reason})")
        uri = str(entry.model_uri)
        return uri if self.directory is None or uri.startswith("runs:/") else str(Path(self.directory) / uri)

    def asset_uris(self) -> dict[str, str]:
        """Every served asset's :meth:`asset_uri`."""
        return {a: self.asset_uri(a) for a in self.manifest.servable()}

    def not_served(self) -> dict[str, str]:
        """Assets listed but not served, with why (a request for one gets 404 naming it)."""
        return {a: f"{e.status} ({e.reason})" for a, e in self.manifest.assets.items() if not e.servable}

    def card(self) -> dict[str, Any]:
        """What the fleet endpoint's ``GET /v1/model`` answers."""
        return {"name": self.name or "raysys-fleet", "version": self.version, "kind": "fleet",
                "requested": self.requested, "alias": self.alias, "sensors": self.manifest.sensors,
                "assets": self.manifest.counts(), "config": self.manifest.config.model_dump(),
                "run_id": self.manifest.run_id}


def fleet_source(model_uri: str, tracking_uri: str | None = None) -> FleetSource | None:
    """The fleet ``model_uri`` names, pinned; None when it names something else (a single ensemble)."""
    path = Path(model_uri).expanduser()
    if path.exists():
        if not (path / FLEET_MANIFEST).exists():
            return None
        digest = hashlib.sha256((path / FLEET_MANIFEST).read_bytes()).hexdigest()[:12]
        return FleetSource(model_uri, read_manifest(path), str(path.resolve()), None, f"local-{digest}")
    if not model_uri.startswith("models:/"):
        return None
    from raysys.fleet.tracking import FLEET_KIND, KIND_TAG, fleet_version
    from raysys.serve._internal.model import parse_models_uri
    from raysys.tracking import resolve_tracking_uri
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias, number = parse_models_uri(model_uri)
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    try:
        kind = client.get_registered_model(name).tags.get(KIND_TAG)
    except MlflowException:  # no such model: the single-model path reports it
        return None
    if kind != FLEET_KIND:
        return None
    manifest, ref = fleet_version(model_uri, uri)
    return FleetSource(model_uri, manifest, None, name, ref["version"], alias)


def asset_model(model_uri: str, asset_id: str, tracking_uri: str | None = None) -> str:
    """Where asset ``asset_id``'s ensemble lies in the fleet ``model_uri`` (``raysys predict --asset``).

    Raises:
        ValueError: ``model_uri`` is not a fleet; :class:`UnknownAssetError`: the fleet does not serve the asset.
    """
    source = fleet_source(model_uri, tracking_uri)
    if source is None:
        raise ValueError(f"--asset needs a fleet (a `raysys fleet train` directory or models:/raysys-fleet@champion), "
                         f"and {model_uri!r} is not one")
    return source.asset_uri(asset_id)
