"""Models of a recipe file: one product variant's target setup, customer parameters and quality checks."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field, model_validator

from cellctl.schema.cell import Name, Smed, StepKind, Strict, located

TAGREF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]*\.[A-Za-z0-9][A-Za-z0-9_\-]*$"
TagRef = Annotated[str, Field(pattern=TAGREF_PATTERN)]
"""``device.tag``."""


class DeviceSetup(Strict):
    """Target setup of one device: a tool, a robot program, fixture axis positions and setpoints."""

    tool: Name | None = None
    program: Annotated[int, Field(ge=1, le=65535)] | None = None
    positions: dict[Name, float] = Field(default_factory=dict)
    setpoints: dict[Name, float | int | bool] = Field(default_factory=dict)


class Parameter(Strict):
    """A customer-adjustable parameter with units, allowed range and the tag it is written to per part."""

    default: float
    min: float
    max: float
    units: str = ""
    target: TagRef
    description: str = ""

    @model_validator(mode="after")
    def _range(self) -> Parameter:
        if not self.min <= self.max:
            raise located(f"min {self.min} is above max {self.max}", "min")
        if not self.min <= self.default <= self.max:
            raise located(f"default {self.default} is outside [{self.min}, {self.max}]", "default")
        return self


class SpcConfig(Strict):
    """SPC of one characteristic: control limits frozen from the first ``baseline`` points (subgroups when
    ``subgroup`` > 1: X-bar/R, else I-MR), the Western Electric rules checked (each raises an alarm) and the
    rules that also hold the cell."""

    baseline: Annotated[int, Field(ge=2, le=1000)] = 25
    subgroup: Annotated[int, Field(ge=1, le=10)] = 1
    rules: tuple[Annotated[int, Field(ge=1, le=4)], ...] = (1, 2, 3, 4)
    hold_on: tuple[Annotated[int, Field(ge=1, le=4)], ...] = ()

    @model_validator(mode="after")
    def _hold_rules_checked(self) -> SpcConfig:
        unchecked = sorted(set(self.hold_on) - set(self.rules))
        if unchecked:
            raise located(f"hold_on names rules {unchecked} that 'rules' does not check", "hold_on")
        return self


class Characteristic(Strict):
    """A measured quality characteristic: nominal, spec limits, units and the gauge tag it comes from."""

    nominal: float
    lsl: float
    usl: float
    units: str = ""
    source: TagRef
    # No chart unless the recipe asks: a recipe written before SPC existed never agreed to its alarms.
    spc: SpcConfig | None = None

    @model_validator(mode="after")
    def _limits(self) -> Characteristic:
        if not self.lsl < self.usl:
            raise located(f"lsl {self.lsl} must be below usl {self.usl}", "lsl")
        if not self.lsl <= self.nominal <= self.usl:
            raise located(f"nominal {self.nominal} is outside [{self.lsl}, {self.usl}]", "nominal")
        return self


class Evidence(Strict):
    """What an operator must scan to confirm a step, and the value the scan must match (case ignored)."""

    ask: Annotated[str, Field(min_length=1, max_length=200)]
    expect: Annotated[str, Field(min_length=1, max_length=200)]


class OperatorStep(Strict):
    """A changeover step done by a person (a manual fixture swap, a material load), confirmed by them.

    It is part of a changeover to this variant from another one (or from an unknown setup that differs); the
    planner orders it after and before the step kinds or other operator steps named here. ``device`` is the
    device the person works at: no other step runs on it meanwhile.
    """

    instruction: Annotated[str, Field(min_length=1, max_length=500)]
    evidence: Evidence | None = None
    device: Name | None = None
    smed: Smed = Smed.INTERNAL
    after: tuple[Name, ...] = ()
    before: tuple[Name, ...] = ()
    expected_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    # A person may take minutes, but a step that nobody confirms must still end and hold the cell.
    timeout_s: Annotated[float, Field(gt=0, le=86400)] = 900.0


class FirstArticle(Strict):
    """The first-article gate after a changeover to this variant: ``parts`` consecutive passes (0: none)."""

    parts: Annotated[int, Field(ge=0, le=1000)] = 0


class Recipe(Strict):
    """A versioned master recipe for one variant."""

    schema_version: Literal[1] = 1
    variant: Name
    version: Annotated[int, Field(ge=1)]
    description: str = ""
    ideal_cycle_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    setup: dict[Name, DeviceSetup]
    parameters: dict[Name, Parameter] = Field(default_factory=dict)
    quality: dict[Name, Characteristic] = Field(default_factory=dict)
    operator_steps: dict[Name, OperatorStep] = Field(default_factory=dict)
    # No gate unless the recipe asks: a gate holds the cell on the first failed part after a changeover, which
    # a recipe written before the gate existed never agreed to.
    first_article: FirstArticle = Field(default_factory=FirstArticle)

    @model_validator(mode="after")
    def _operator_step_names(self) -> Recipe:
        kinds = {k.value for k in StepKind}
        for name, step in self.operator_steps.items():
            if name in kinds:
                raise located(
                    f"operator step {name!r} has the name of a step kind: 'after' and 'before' could not "
                    "tell them apart",
                    "operator_steps",
                    name,
                )
            for key in ("after", "before"):
                for ref in getattr(step, key):
                    if ref == name:
                        raise located(
                            f"operator step {name!r} cannot come {key} itself", "operator_steps", name, key
                        )
                    if ref not in kinds and ref not in self.operator_steps:
                        known = ", ".join([*sorted(kinds), *self.operator_steps]) or "none"
                        raise located(
                            f"{ref!r} is neither a step kind nor an operator step of this recipe "
                            f"(known: {known})",
                            "operator_steps",
                            name,
                            key,
                        )
        return self

    def snapshot_hash(self) -> str:
        """Stable hash of the recipe's content: a job runs from this snapshot."""
        # Fields at their defaults that did not always exist are left out: journaled jobs stay matched.
        data = self.model_dump(mode="json")
        if not self.operator_steps:
            del data["operator_steps"]
        if self.first_article == FirstArticle():
            del data["first_article"]
        for name, characteristic in self.quality.items():
            if characteristic.spc is None:
                del data["quality"][name]["spc"]
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
