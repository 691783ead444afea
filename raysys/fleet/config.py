"""What a fleet trains for each asset, and with which resources: one :class:`FleetConfig`, stored in
``fleet.json`` so that ``--resume`` trains the missing assets exactly as the others were."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from raysys.ensemble.gates import DEFAULT_GATES
from raysys.models.params import FAMILY_NAMES

#: Per-asset gates: the label-free ``heldout_far_ratio`` (the threshold keeps its promise on held-out
#: normal rows; unlabelled data), and where the asset's test split has labels a floor on ROC AUC and the
#: ensemble stage's ceiling on the false-alarm rate. Not precision or recall: one asset's test split holds
#: a handful of events, too few for either to mean much (``--gate`` adds them).
FLEET_GATES: dict[str, float] = {"roc_auc": 0.80, "false_alarm_rate": DEFAULT_GATES["false_alarm_rate"],
                                 "heldout_far_ratio": DEFAULT_GATES["heldout_far_ratio"]}


class FleetConfig(BaseModel):
    """How every asset's detector set is built (``raysys fleet train``'s options).

    Args:
        families: Deep families fitted per asset (``ae``, ``vae``, ``lstm``, ``conv``); may be empty
            with ``classical``.
        classical: Add the Isolation Forest and the PCA detector (T2, SPE) as members (``--ensemble``).
        params: Detector parameters for every family (e.g. ``{"epochs": 20}``).
        threshold_method: ``far`` (default), ``best_f1`` or ``percentile``; without validation labels
            the label-free rules apply (docs/detection.md#without-labels).
        target_far: The false-alarm rate asked for, per asset.
        gates: Gate name to limit, checked per asset (an asset that fails is trained but not served).
        seed: Seed of every member of every asset.
        num_cpus: CPUs per asset task (torch uses as many threads).
        num_gpus: GPUs per asset task (0: CPU); with a GPU the deep members train on CUDA.
        max_concurrent: Most asset tasks in flight at once (None: as many as the cluster fits).
        max_retries: Times Ray retries an asset whose worker process died (an exception is not retried).
    """

    model_config = ConfigDict(extra="forbid")

    families: list[str] = Field(default_factory=lambda: ["ae"])
    classical: bool = False
    params: dict[str, Any] = Field(default_factory=dict)
    threshold_method: Literal["far", "best_f1", "percentile"] = "far"
    target_far: float = Field(0.01, gt=0.0, lt=1.0)
    gates: dict[str, float] = Field(default_factory=lambda: dict(FLEET_GATES))
    seed: int = 0
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    max_concurrent: int | None = Field(None, ge=1)
    max_retries: int = Field(1, ge=0)

    @field_validator("families")
    @classmethod
    def _known_families(cls, families: list[str]) -> list[str]:
        unknown = sorted(set(families) - set(FAMILY_NAMES))
        if unknown:
            raise ValueError(f"unknown model families {unknown}; choose from {list(FAMILY_NAMES)}")
        if len(set(families)) != len(families):
            raise ValueError(f"families repeat: {families}")
        return families

    def model_post_init(self, _: Any) -> None:
        if not self.families and not self.classical:
            raise ValueError("no members: give at least one model family or the classical members (--ensemble)")

    @property
    def resources(self) -> dict[str, float]:
        """Ray resources of one asset task."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    def training_fields(self) -> dict[str, Any]:
        """What decides an asset's model (not how it is scheduled): a resumed fleet must keep these."""
        return self.model_dump(include={"families", "classical", "params", "threshold_method", "target_far",
                                        "gates", "seed"})
