"""ASHA with one set of rungs per detector family.

With one set of rungs for all families, a family whose detection metric rises slowly (the LSTM,
whose first epochs lag the dense models) loses every early comparison and all of its trials
are stopped at the first rung: the sweep then reports a weak best LSTM. Per-family rungs make
each trial compete only with trials of its own family, which is what "best trial per family"
needs, at the price of more epochs (each family's first trials pass its rungs unopposed).
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler


class FamilyASHAScheduler(FIFOScheduler):
    """Asynchronous successive halving (ASHA), separately within each ``config["family"]``.

    Args:
        time_attr: Result key that measures progress (``epoch``).
        max_t: A trial reaching this ``time_attr`` is stopped.
        grace_period: ``time_attr`` every trial gets before it may be stopped.
        reduction_factor: Each rung keeps the best ``1 / reduction_factor`` of its family's trials.
        metric: Result key to compare (else set by ``TuneConfig(metric=...)``).
        mode: ``max`` or ``min`` (else set by ``TuneConfig(mode=...)``).
    """

    def __init__(self, time_attr: str, max_t: int, grace_period: int, reduction_factor: float,
                 metric: str | None = None, mode: str | None = None):
        super().__init__()
        self._asha_args = {"time_attr": time_attr, "max_t": max_t, "grace_period": grace_period,
                           "reduction_factor": reduction_factor}
        self._metric = metric
        self._mode = mode
        self._by_family: dict[str, AsyncHyperBandScheduler] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        for scheduler in self._by_family.values():
            scheduler.set_search_properties(metric, mode, **spec)
        return True

    def _family(self, trial: Trial) -> AsyncHyperBandScheduler:
        family = str(trial.config.get("family", ""))
        if family not in self._by_family:
            self._by_family[family] = AsyncHyperBandScheduler(metric=self._metric, mode=self._mode,
                                                              **self._asha_args)
        return self._by_family[family]

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._family(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._family(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        return self._family(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._family(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._family(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        lines = [f"[{family}] {s.debug_string()}" for family, s in sorted(self._by_family.items())]
        return "\n".join(lines) or "Using ASHA per family"
