"""A sweep as data: a base run, a search space over some of its settings, how to search it and what to minimise.

Grid and random sweeps are planned all at once (`grid_points`, `random_points`); a TPE sweep asks Optuna for one
trial at a time (`workbench.jobs.sweeps`). Every trial is the base run with its parameters applied (`trial_spec`),
and a stored trial's parameters are read back from its spec (`params_of`), so the run table is the only record.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workbench.errors import SpecError
from workbench.spec import RunSpec, parse_spec

MAX_GRID_TRIALS = 256  # a grid is queued at once; 256 tiny runs already take hours on a CPU
MAX_TRIALS = 500  # random and TPE trials of one sweep
MAX_PARALLEL = 64
SIGNIFICANT_DIGITS = 4  # sampled numbers are rounded so run names stay readable


@dataclass(frozen=True)
class SweepParameter:
    """A setting a sweep can vary: where it lives in a RunSpec and the type of its values."""

    section: Literal["net", "train"]
    field: str
    kind: type
    label: str


SWEEP_PARAMETERS: dict[str, SweepParameter] = {
    "lr": SweepParameter("train", "lr", float, "learning rate"),
    "weight_decay": SweepParameter("train", "weight_decay", float, "weight decay"),
    "batch_size": SweepParameter("train", "batch_size", int, "batch size"),
    "depth": SweepParameter("net", "depth", int, "depth (weighted layers)"),
    "shortcut": SweepParameter("net", "shortcut", str, "shortcut option"),
    "placement": SweepParameter("net", "placement", str, "BN/ReLU placement"),
    "warmup": SweepParameter("train", "warmup_iterations", int, "warm-up iterations"),
    "seed": SweepParameter("train", "seed", int, "seed"),
}
METHODS = ("grid", "random", "tpe")


class ParameterSpace(BaseModel):
    """The values one parameter takes: a list (grid, or a choice for random and TPE) or a range (random, TPE)."""

    model_config = ConfigDict(extra="forbid")

    values: list[int | float | str] | None = Field(default=None, description="grid: each value; else a choice")
    low: float | None = Field(default=None, description="random/TPE: lowest value of a range")
    high: float | None = Field(default=None, description="random/TPE: highest value of a range")
    log: bool = Field(default=False, description="sample the range evenly in log scale")

    @model_validator(mode="after")
    def _check(self) -> ParameterSpace:
        if self.values is not None and (self.low is not None or self.high is not None):
            raise ValueError("give either a list of values or a range (low..high), not both")
        if self.values is None and (self.low is None or self.high is None):
            raise ValueError("give a list of values (0.1,0.05) or a range with both ends (0.001..0.1)")
        if self.values is not None and not self.values:
            raise ValueError("the list of values is empty; give at least one")
        if self.values is not None and self.log:
            raise ValueError("log applies to a range (0.001..0.1 log), not to a list of values")
        if self.values is None and not self.low < self.high:
            raise ValueError(f"a range goes from low to a higher high; got {self.low:g}..{self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs a low above 0; got {self.low:g}")
        return self

    @property
    def is_range(self) -> bool:
        return self.values is None


class SweepSpec(BaseModel):
    """A base run, the parameters to vary, the search method and the objective (an error rate to minimise)."""

    model_config = ConfigDict(extra="forbid")

    base: RunSpec
    space: dict[str, ParameterSpace]
    method: Literal["grid", "random", "tpe"] = "grid"
    trials: int | None = Field(default=None, description="random/TPE: how many trials")
    objective: Literal["final", "best"] = Field(
        default="final", description="the trial's final or best error, on the validation split when there is one")
    pruning: bool = Field(default=False, description="stop trials worse than the median of completed ones")
    prune_after: int = Field(default=2, description="completed trials needed before pruning starts")
    parallel: int = Field(default=1, description="TPE: trials queued or running at once")
    seed: int = Field(default=0, description="random/TPE: seed of the sampler")
    base_preset: str | None = Field(default=None, description="the preset the base network is, if any")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if not self.space:
            raise ValueError(f"a sweep needs at least one parameter; choose from {', '.join(SWEEP_PARAMETERS)}")
        for name, dimension in self.space.items():
            self.space[name] = _checked_dimension(self.base, name, dimension, self.method)
        if self.method == "grid":
            if self.trials is not None:
                raise ValueError("a grid runs every combination; leave trials out (it has "
                                 f"{self.grid_size()} combinations)")
            if self.grid_size() > MAX_GRID_TRIALS:
                sizes = " x ".join(str(len(d.values)) for d in self.space.values())
                raise ValueError(f"the grid has {sizes} = {self.grid_size():,} combinations, more than the "
                                 f"{MAX_GRID_TRIALS} a grid may queue; use fewer values, or a random or TPE "
                                 "search with a trial count")
        elif self.trials is None or not 1 <= self.trials <= MAX_TRIALS:
            raise ValueError(f"a {self.method} search needs a number of trials from 1 to {MAX_TRIALS}; "
                             f"got {self.trials}")
        if not 1 <= self.prune_after <= MAX_TRIALS:
            raise ValueError(f"prune_after is how many trials must complete before pruning starts, from 1 to "
                             f"{MAX_TRIALS}; got {self.prune_after}")
        if not 1 <= self.parallel <= MAX_PARALLEL:
            raise ValueError(f"parallel is how many TPE trials are queued or running at once, from 1 to "
                             f"{MAX_PARALLEL}; got {self.parallel}")
        if self.seed < 0:
            raise ValueError(f"the sampler seed is 0 or more; got {self.seed}")
        return self

    def grid_size(self) -> int:
        return math.prod(len(dimension.values) for dimension in self.space.values())

    @property
    def trial_count(self) -> int:
        """How many trials the whole sweep runs."""
        return self.grid_size() if self.method == "grid" else self.trials

    @property
    def objective_split(self) -> str:
        """The split whose error is minimised: validation when the base run holds one out, else test."""
        return "val" if self.base.data.validation_size else "test"

    @property
    def objective_label(self) -> str:
        split = "validation" if self.objective_split == "val" else "test"
        return f"{self.objective} {split} error (%)"


def _checked_dimension(base: RunSpec, name: str, dimension: ParameterSpace, method: str) -> ParameterSpace:
    """The dimension with its values as the parameter's type, every value (and both ends of a range) making a valid
    run on its own; ValueError naming the parameter otherwise."""
    if name not in SWEEP_PARAMETERS:
        raise ValueError(f"unknown sweep parameter {name!r}; choose from {', '.join(SWEEP_PARAMETERS)}")
    parameter = SWEEP_PARAMETERS[name]
    if parameter.field not in type(getattr(base, parameter.section)).model_fields:
        raise ValueError(f"{name} sets {parameter.section}.{parameter.field}, which a {base.net.kind} network does "
                         "not have; pick a ResNet in the Build tab or leave it out")
    if method == "grid" and dimension.is_range:
        raise ValueError(f"{name}: a grid needs a list of values (for example {name}=a,b), not a range")
    if dimension.is_range and parameter.kind is str:
        raise ValueError(f"{name} takes names, not a range; give a list such as {name}=A,B")
    try:
        if dimension.is_range:
            ends = [parameter.kind(dimension.low), parameter.kind(dimension.high)]
            if parameter.kind is int and ends != [dimension.low, dimension.high]:
                raise ValueError(f"a range of {parameter.label} has whole-number ends; got "
                                 f"{dimension.low:g}..{dimension.high:g}")
            checked = dimension
            tried = ends
        else:
            values = [_as_kind(parameter, value) for value in dimension.values]
            if len(set(values)) != len(values):
                raise ValueError(f"the values {values} repeat one; give each once")
            checked = dimension.model_copy(update={"values": values})
            tried = values
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    for value in tried:
        try:
            trial_spec(base, {name: value})
        except SpecError as exc:
            raise ValueError(f"{name}={value} does not make a valid run: {exc}") from None
    return checked


def _as_kind(parameter: SweepParameter, value: Any) -> Any:
    if parameter.kind is str:
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if parameter.kind is int:
        if not number.is_integer():
            raise ValueError(f"{parameter.label} is a whole number; got {value}")
        return int(number)
    return number


def trial_spec(base: RunSpec, params: Mapping[str, Any]) -> RunSpec:
    """The base run with `params` applied; SpecError when they make an invalid run. A new depth renames the network
    after it (resnet20 at depth 32: resnet32)."""
    data = base.model_dump(mode="json")
    for name, value in params.items():
        parameter = SWEEP_PARAMETERS[name]
        data[parameter.section][parameter.field] = value
        if name == "depth":
            data["net"]["blocks"] = None
            data["net"]["name"] = name_at_depth(base.net.name, value)
    return parse_spec(RunSpec, data)


def trial_preset(sweep: SweepSpec, params: Mapping[str, Any]) -> str | None:
    """The preset a trial's network is: the base's while the trial leaves the network as it is."""
    return None if any(SWEEP_PARAMETERS[name].section == "net" for name in params) else sweep.base_preset


def name_at_depth(name: str, depth: int) -> str:
    """A network's name at another depth: its name without trailing digits, then the depth."""
    stem = name.rstrip("0123456789-") or name
    return f"{stem}{depth}"


def params_of(spec: Mapping[str, Any], names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The values of the parameters `names` in a stored run spec (JSON)."""
    return {name: spec[SWEEP_PARAMETERS[name].section][SWEEP_PARAMETERS[name].field] for name in names}


def trial_name(number: int, params: Mapping[str, Any]) -> str:
    """"trial 3: lr=0.05, depth=32"."""
    return f"trial {number}: " + ", ".join(f"{name}={_short(value)}" for name, value in params.items())


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def rounded(value: float, low: float, high: float) -> float:
    """A sampled number to SIGNIFICANT_DIGITS, kept inside its range."""
    return min(max(float(f"{value:.{SIGNIFICANT_DIGITS}g}"), low), high)


def grid_points(sweep: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the last parameter varying fastest."""
    names = list(sweep.space)
    return [dict(zip(names, combination, strict=True))
            for combination in itertools.product(*(sweep.space[name].values for name in names))]


def random_points(sweep: SweepSpec) -> list[dict[str, Any]]:
    """`sweep.trials` points drawn with the sweep's seed (the same seed gives the same points): a choice from a list,
    evenly (or log-evenly) from a range, whole numbers for whole-number parameters."""
    rng = random.Random(sweep.seed)
    return [{name: _draw(rng, SWEEP_PARAMETERS[name], dimension) for name, dimension in sweep.space.items()}
            for _ in range(sweep.trials)]


def _draw(rng: random.Random, parameter: SweepParameter, dimension: ParameterSpace) -> Any:
    if not dimension.is_range:
        return rng.choice(dimension.values)
    low, high = dimension.low, dimension.high
    if dimension.log:
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    if parameter.kind is int:
        return min(max(round(value), int(low)), int(high))
    return rounded(value, low, high)


RANGE = re.compile(r"^\s*(?P<low>[^.\s][^\s]*?)\s*\.\.\s*(?P<high>[^\s:]+)\s*(?::?\s*(?P<log>log))?\s*$")


def parse_dimension(text: str) -> tuple[str, ParameterSpace]:
    """"lr=0.1,0.05", "lr=0.001..0.3 log" (or ":log"), "shortcut=A,B" as (name, space); SpecError when malformed."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name or not spec.strip():
        raise SpecError(f"a sweep parameter is NAME=VALUES such as lr=0.1,0.05 or lr=0.001..0.3 log; got {text!r}")
    match = RANGE.match(spec)
    try:
        if match:
            space = ParameterSpace(low=float(match["low"]), high=float(match["high"]), log=bool(match["log"]))
        else:
            space = ParameterSpace(values=[value.strip() for value in spec.split(",") if value.strip()])
    except ValueError as exc:
        raise SpecError(f"sweep parameter {name}: {_first_message(exc)}") from None
    return name, space


def parse_space(text: str) -> dict[str, dict[str, Any]]:
    """A search space typed as "lr=0.001..0.3 log; depth=20,32", one parameter per line or ';'-separated."""
    entries = [entry for line in text.splitlines() for entry in line.split(";") if entry.strip()]
    if not entries:
        raise SpecError("type the parameters to sweep, for example: lr=0.01..0.3 log; depth=20,32")
    space: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name, dimension = parse_dimension(entry)
        if name in space:
            raise SpecError(f"sweep parameter {name} is given twice; give each once")
        space[name] = dimension.model_dump(exclude_defaults=True)
    return space


def build_sweep(base: RunSpec, space_text: str, **settings: Any) -> SweepSpec:
    """A sweep of `base` over a typed search space, with the SweepSpec fields in `settings` (None: the default);
    SpecError saying what to fix."""
    given = {name: value for name, value in settings.items() if value is not None}
    return parse_spec(SweepSpec, {"base": base.model_dump(), "space": parse_space(space_text), **given})


def _first_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(exc)
