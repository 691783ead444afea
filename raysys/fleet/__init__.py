"""Fleets: one detector set per asset, trained in parallel as Ray tasks, tracked in one MLflow run,
registered as one model (``raysys-fleet``) and served from one multiplexed endpoint (docs/fleet.md)."""

from raysys.fleet.asset import FAILED, GATE_FAILED, SUCCEEDED, AssetResult, fit_asset, train_asset
from raysys.fleet.config import FLEET_GATES, FleetConfig
from raysys.fleet.manifest import AssetEntry, FleetManifest, read_manifest

__all__ = ["FAILED", "FLEET_GATES", "GATE_FAILED", "SUCCEEDED", "AssetEntry", "AssetResult", "FleetConfig",
           "FleetManifest", "fit_asset", "read_manifest", "train_asset"]
