"""Models of a recipe file: one product variant's target setup, customer parameters and quality checks."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field, model_validator

from cellctl.schema.cell import Name, Strict, located

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


class Characteristic(Strict):
    """A measured quality characteristic: nominal, spec limits, units and the gauge tag it comes from."""

    nominal: float
    lsl: float
    usl: float
    units: str = ""
    source: TagRef

    @model_validator(mode="after")
    def _limits(self) -> Characteristic:
        if not self.lsl < self.usl:
            raise located(f"lsl {self.lsl} must be below usl {self.usl}", "lsl")
        if not self.lsl <= self.nominal <= self.usl:
            raise located(f"nominal {self.nominal} is outside [{self.lsl}, {self.usl}]", "nominal")
        return self


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
    # No gate unless the recipe asks: a gate holds the cell on the first failed part after a changeover, which
    # a recipe written before the gate existed never agreed to.
    first_article: FirstArticle = Field(default_factory=FirstArticle)

    def snapshot_hash(self) -> str:
        """Stable hash of the recipe's content: a job runs from this snapshot."""
        data = self.model_dump(mode="json")
        if self.first_article == FirstArticle():
            # A recipe without a gate hashes as it did before the field existed: journaled jobs stay matched.
            del data["first_article"]
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
