"""The search space as Ray Tune's ``OptunaSearch`` sees it: a define-by-run function.

Families are conditional: an ``lstm`` trial has ``window`` but no ``hidden_dims``. A define-by-run
function expresses that directly, and the same function serves random search (Optuna's
``RandomSampler``) and model-based search (``TPESampler``), so both draw from one space. The
family goes round-robin by trial number, so every family gets its share of trials whatever the
sampler does; TPE then models each family's parameters separately (their names differ).

A trial's config is ``{"family": "ae", "ae": {"lr": ..., "hidden_dims": [...], ...}}``.
"""

from __future__ import annotations

from typing import Any

import optuna

from raysys.tune.config import Distribution, SweepConfig


class FamilySpace:
    """Picklable define-by-run space for ``OptunaSearch`` (Tune saves it with the searcher).

    Args:
        families: Families, taken round-robin by Optuna trial number.
        space: Family -> parameter -> constant or :class:`Distribution`.
    """

    def __init__(self, families: list[str], space: dict[str, dict[str, Any]]):
        self.families = list(families)
        self.space = space

    @classmethod
    def from_config(cls, config: SweepConfig) -> "FamilySpace":
        return cls(config.families, {f: config.family_space(f) for f in config.families})

    def __call__(self, trial: Any) -> dict[str, Any]:
        family = self.families[trial.number % len(self.families)]
        # values returned here override what Optuna recorded (lists drawn as JSON text) and add constants
        values: dict[str, Any] = {"family": family}
        for name, spec in self.space[family].items():
            key = f"{family}/{name}"
            values[key] = spec.suggest(trial, key) if isinstance(spec, Distribution) else spec
        return values


def trial_params(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(family, detector parameters) of a trial's config."""
    family = config["family"]
    return family, dict(config.get(family) or {})


def make_searcher(config: SweepConfig):
    """Tune's ``OptunaSearch`` over ``config``'s space: random or TPE, seeded."""
    from ray.tune.search.optuna import OptunaSearch

    if config.search == "optuna":
        sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.n_startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=config.seed)
    return OptunaSearch(space=FamilySpace.from_config(config), metric=config.metric, mode=config.mode,
                        sampler=sampler)
