"""The typed configuration of a sweep: what to search, how to schedule it, where to write it.

A sweep config is YAML (or JSON) with the fields of :class:`SweepConfig`; ``space`` maps each
detector family (and ``common``, shared by every family) to its parameters, each either a
constant or a distribution written as a one-key mapping::

    space:
      common:
        lr: {loguniform: [1.0e-4, 1.0e-2]}
      ae:
        hidden_dims: {choice: [[64, 32], [32, 16]]}
        dropout: {uniform: [0.0, 0.3]}
        latent_dim: 8                     # a constant

Every mistake (unknown key, unknown family or parameter, unknown distribution, empty choice,
bad range, value out of a parameter's domain) raises ``ValueError`` naming the key and value,
before any Ray work.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from raysys.models import FAMILY_NAMES, PARAM_RULES, check_param
from raysys.models.params import SPELLINGS, as_number

#: Distributions a parameter may be drawn from: ``{kind: arguments}``.
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "lograndint")
#: Metrics a sweep can rank trials by, with their direction.
METRICS = {"val_pr_auc": "max", "val_loss": "min"}
SCHEDULERS = ("asha", "asha_family", "fifo")
SEARCHERS = ("random", "optuna")
COMMON = "common"
#: Sweep settings -> the detector parameter each sets in every trial (so not tunable in ``space``).
RESERVED_PARAMS = {param: setting for setting, param in SPELLINGS.items()}
#: What ``--quick`` / :meth:`SweepConfig.quick` change: one trial per family, 2 epochs, 1 worker each,
#: ASHA within each family (with one trial per family, every trial runs its 2 epochs).
QUICK = {"num_samples": len(FAMILY_NAMES), "max_epochs": 2, "patience": 2, "grace_period": 1, "max_concurrent": 2,
         "workers_per_trial": 1, "n_startup_trials": 3, "scheduler": "asha_family"}


@dataclass(frozen=True)
class Distribution:
    """One parameter's search distribution.

    Args:
        kind: One of :data:`DISTRIBUTIONS`. ``choice`` picks one of ``args``; ``uniform`` and
            ``loguniform`` draw a float in ``[low, high]``; ``randint`` and ``lograndint`` draw
            an integer in ``[low, high]`` (both ends included).
        args: The options (``choice``) or ``(low, high)``.
    """

    kind: str
    args: tuple

    @property
    def is_int(self) -> bool:
        return self.kind in ("randint", "lograndint")

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw a value from an Optuna trial (``trial.suggest_*``) under ``name``."""
        if self.kind == "choice":
            if all(o is None or isinstance(o, (bool, int, float, str)) for o in self.args):
                return trial.suggest_categorical(name, list(self.args))
            # Optuna's categorical options must be scalars: draw the JSON text, return the value
            return json.loads(trial.suggest_categorical(name, [json.dumps(o) for o in self.args]))
        low, high = self.args
        log = self.kind.startswith("log")
        if self.is_int:
            return trial.suggest_int(name, low, high, log=log)
        return trial.suggest_float(name, low, high, log=log)


def parse_param(family: str, name: str, spec: Any, where: str) -> Any:
    """A constant (validated) or a :class:`Distribution` from its config entry."""
    if name in RESERVED_PARAMS:
        raise ValueError(f"{where}: {name!r} is set by the sweep; use the top-level {RESERVED_PARAMS[name]} instead")
    if not isinstance(spec, Mapping):
        return check_param(name, spec, where)
    if len(spec) != 1:
        raise ValueError(f"{where}: a distribution is a mapping with one key out of {list(DISTRIBUTIONS)}, "
                         f"got {dict(spec)!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"{where}: unknown distribution {kind!r}; expected one of {list(DISTRIBUTIONS)}")
    if not isinstance(args, (list, tuple)):
        raise ValueError(f"{where}.{kind}: expected a list, got {args!r}")
    if kind == "choice":
        if not args:
            raise ValueError(f"{where}.choice: needs at least one option, got {list(args)!r}")
        return Distribution(kind, tuple(check_param(name, o, f"{where}.choice[{i}]") for i, o in enumerate(args)))
    if len(args) != 2:
        raise ValueError(f"{where}.{kind}: expected [low, high], got {list(args)!r}")
    low, high = (as_number(a, f"{where}.{kind}") for a in args)
    if not low < high:
        raise ValueError(f"{where}.{kind}: low must be below high, got [{low!r}, {high!r}]")
    if kind.startswith("log") and low <= 0:
        raise ValueError(f"{where}.{kind}: bounds must be > 0 on a log scale, got [{low!r}, {high!r}]")
    if kind.endswith("randint"):
        if int(low) != low or int(high) != high:
            raise ValueError(f"{where}.{kind}: bounds must be integers, got [{low!r}, {high!r}]")
        low, high = int(low), int(high)
        if name in PARAM_RULES and PARAM_RULES[name][0] is float:
            low, high = float(low), float(high)
            kind = "uniform" if kind == "randint" else "loguniform"
    elif name in PARAM_RULES and PARAM_RULES[name][0] is not float:
        raise ValueError(f"{where}.{kind}: {name} takes {PARAM_RULES[name][2]}; draw it with randint, "
                         f"lograndint or choice, not {kind}")
    check_param(name, low, f"{where}.{kind}[0]")
    check_param(name, high, f"{where}.{kind}[1]")
    return Distribution(kind, (low, high))


@dataclass
class SweepConfig:
    """What ``raysys tune`` runs: a Ray Tune sweep whose trials are Ray Train runs.

    Args:
        name: Sweep name: the Tune experiment directory under ``storage_path`` and the MLflow
            parent run (``None``: ``sweep-TIMESTAMP``).
        families: Detector families to search; trials go round-robin over them.
        num_samples: Trials in total (over all families).
        max_epochs: Epochs a trial trains at most (ASHA's ``max_t``).
        patience: Epochs without validation-loss improvement before a trial stops itself.
        metric: What ranks trials: ``val_pr_auc`` (PR AUC on the labelled validation split,
            maximised) or ``val_loss`` (minimised; not comparable across families).
        scheduler: ``asha`` (stop bad trials early, all families on one set of rungs),
            ``asha_family`` (ASHA with rungs per family: a trial competes only with its own
            family) or ``fifo`` (every trial runs to the end).
        grace_period: Epochs every trial gets before ASHA may stop it.
        reduction_factor: ASHA keeps the best ``1 / reduction_factor`` of trials at each rung.
        search: ``random`` or ``optuna`` (model-based TPE), both through Tune's ``OptunaSearch``.
        n_startup_trials: Random trials before TPE starts modelling (``optuna`` only).
        seed: Seed of the searcher: the same seed draws the same configs.
        max_concurrent: Trials running at once (each holds ``workers_per_trial`` workers).
        workers_per_trial: Ray Train workers per trial.
        cpus_per_worker: CPUs each Train worker reserves.
        gpus_per_worker: GPUs each Train worker reserves (fractions share a GPU).
        time_budget_s: Stop the whole sweep after this many seconds (``None``: no limit).
        max_failures: Worker-group restarts Ray Train attempts per trial.
        storage_path: Where Tune and Train keep the sweep (shared storage on a cluster).
        tracking_uri: MLflow tracking URI (``None``: ``$MLFLOW_TRACKING_URI`` or ./mlruns).
        experiment: MLflow experiment.
        space: Family (or ``common``) -> parameter -> constant or distribution.
    """

    name: str | None = None
    families: list[str] = field(default_factory=lambda: sorted(FAMILY_NAMES))
    num_samples: int = 12
    max_epochs: int = 20
    patience: int = 5
    metric: str = "val_pr_auc"
    scheduler: str = "asha"
    grace_period: int = 2
    reduction_factor: float = 3
    search: str = "random"
    n_startup_trials: int = 6
    seed: int = 0
    max_concurrent: int = 2
    workers_per_trial: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    time_budget_s: float | None = None
    max_failures: int = 1
    storage_path: str = "runs/tune"
    tracking_uri: str | None = None
    experiment: str = "raysys"
    space: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        families = self.families
        if isinstance(families, str) or not isinstance(families, (list, tuple)) or not families:
            raise ValueError(f"families must be a non-empty list out of {sorted(FAMILY_NAMES)}, got {families!r}")
        for family in families:
            if family not in FAMILY_NAMES:
                raise ValueError(f"families: unknown family {family!r}; expected some of {sorted(FAMILY_NAMES)}")
        if len(set(families)) != len(families):
            raise ValueError(f"families: each family once, got {list(families)!r}")
        self.families = list(families)
        for key, low in (("num_samples", 1), ("max_epochs", 1), ("patience", 1), ("grace_period", 1),
                         ("n_startup_trials", 0), ("seed", 0), ("max_concurrent", 1), ("workers_per_trial", 1),
                         ("max_failures", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        for key in ("reduction_factor", "cpus_per_worker", "gpus_per_worker"):
            setattr(self, key, as_number(getattr(self, key), key))
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {list(SCHEDULERS)}, got {self.scheduler!r}")
        if self.search not in SEARCHERS:
            raise ValueError(f"search must be one of {list(SEARCHERS)}, got {self.search!r}")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {self.reduction_factor!r}")
        if self.scheduler != "fifo" and self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period must be <= max_epochs ({self.max_epochs}), got {self.grace_period!r}")
        if self.cpus_per_worker < 0:
            raise ValueError(f"cpus_per_worker must be >= 0, got {self.cpus_per_worker!r}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ValueError("a Train worker must reserve some resource: "
                             "cpus_per_worker and gpus_per_worker are both 0")
        if self.time_budget_s is not None:
            self.time_budget_s = as_number(self.time_budget_s, "time_budget_s")
            if self.time_budget_s <= 0:
                raise ValueError(f"time_budget_s must be > 0 (or null for no limit), got {self.time_budget_s!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name
                                      or os.sep in self.name or self.name in (".", "..")):
            raise ValueError(f"name must be a plain directory name, got {self.name!r}")
        self._parsed = parse_space(self.space, self.families)

    # -- what the sweep runs ------------------------------------------------------
    @property
    def mode(self) -> str:
        """``max`` or ``min``: the direction of :attr:`metric`."""
        return METRICS[self.metric]

    def family_space(self, family: str) -> dict[str, Any]:
        """Parameter -> constant or :class:`Distribution` for ``family`` (``common`` merged in)."""
        return dict(self._parsed[family])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "sweep config") -> "SweepConfig":
        """A config from a mapping; unknown keys raise ``ValueError`` naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {known}")
        return cls(**dict(data))

    @classmethod
    def default(cls, **overrides: Any) -> "SweepConfig":
        """The packaged default sweep (``raysys/configs/sweep.yaml``) with ``overrides``."""
        return load_sweep_config(default_config_path(), **overrides)

    @classmethod
    def quick(cls, **overrides: Any) -> "SweepConfig":
        """A tiny sweep for smoke runs and ``--quick``: one trial per family (4), 2 epochs,
        1 worker per trial, 2 at a time, ASHA within each family; the default search space."""
        return cls.default(**{**QUICK, **overrides})

    def replace(self, **overrides: Any) -> "SweepConfig":
        """A copy with ``overrides`` applied (and validated)."""
        return SweepConfig.from_dict({**self.to_dict(), **overrides}, "overrides")


def parse_space(space: Any, families: list[str]) -> dict[str, dict[str, Any]]:
    """Validate ``space``; returns family -> parameter -> constant or :class:`Distribution`."""
    from raysys.models import build_detector  # torch: only when a config is parsed, not for --help

    if space is None:
        space = {}
    if not isinstance(space, Mapping):
        raise ValueError(f"space must map families to parameters, got {space!r}")
    allowed = [COMMON, *FAMILY_NAMES]
    for key in space:
        if key not in allowed:
            raise ValueError(f"space: unknown family {key!r}; expected some of {allowed}")
    for key, params in space.items():
        if params is not None and not isinstance(params, Mapping):
            raise ValueError(f"space.{key}: expected a mapping of parameters, got {params!r}")
    parsed: dict[str, dict[str, Any]] = {}
    for family in families:
        names = list(build_detector(family).get_params())
        merged = {**(space.get(COMMON) or {}), **(space.get(family) or {})}
        parsed[family] = {}
        for name, spec in merged.items():
            where = f"space.{family if name in (space.get(family) or {}) else COMMON}.{name}"
            if name not in names:
                raise ValueError(f"{where}: unknown {family} parameter {name!r}; expected some of {sorted(names)}")
            parsed[family][name] = parse_param(family, name, spec, where)
    for key in space:
        if key not in (COMMON, *families):
            # a family not searched: still check its entries so typos are caught
            names = list(build_detector(key).get_params())
            for name, spec in (space.get(key) or {}).items():
                if name not in names:
                    raise ValueError(f"space.{key}.{name}: unknown {key} parameter {name!r}; "
                                     f"expected some of {sorted(names)}")
                parse_param(key, name, spec, f"space.{key}.{name}")
    return parsed


def default_config_path() -> Path:
    """The packaged default sweep config (copy it, edit it, pass it with ``--config``)."""
    return Path(str(resources.files("raysys").joinpath("configs", "sweep.yaml")))


def load_sweep_config(path: str | os.PathLike, **overrides: Any) -> SweepConfig:
    """Read a YAML or JSON sweep config, apply ``overrides`` (``None`` values are skipped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a malformed file, an unknown key, or a bad value (named in the message).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep config {path} not found")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return SweepConfig.from_dict(merged, str(path))
