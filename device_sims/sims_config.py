"""Models of the simulator behaviour file (`sims.yaml`): timings, speeds and gauge channels per profile.

The controller never reads this file; only device_sims does. Durations are seconds at time scale 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from cellctl.core.devices import ProfileKind
from cellctl.errors import ConfigError, ConfigIssue
from cellctl.schema.cell import CellConfig, Datatype, Name, Strict

Seconds = Annotated[float, Field(ge=0, le=3600)]
TagRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*\.[A-Za-z0-9][A-Za-z0-9_\-]*$")]
"""``device.tag`` in the cell file."""
InitialValue = bool | int | float | str


class RobotSettings(Strict):
    """A simulated robot: how long loading a program and running a cycle take."""

    program_load_s: Seconds = 0.5
    cycle_s: Seconds = 2.0
    programs: tuple[Annotated[int, Field(ge=1, le=65535)], ...] | None = Field(
        default=None, description="program numbers the robot knows; None accepts any"
    )


class ToolChangerSettings(Strict):
    """A simulated tool changer: how long one change takes, and how much of it a preselect can do ahead.

    Writing ``preselect`` (when the cell has that tag) turns the magazine toward that tool in the background;
    a change to it is then shorter by the time the magazine turned, up to ``preselect_s``.
    """

    change_s: Seconds = 4.0
    preselect_s: Seconds = 0.0


class FixtureSettings(Strict):
    """A simulated adjustable fixture: clamp time and axis speed."""

    clamp_s: Seconds = 0.4
    speed_mm_s: Annotated[float, Field(gt=0, le=10_000)] = 60.0


class PressSettings(Strict):
    """A simulated press (stapler): cycle time and how many staples a part takes for a given pitch."""

    cycle_s: Seconds = 0.8
    seam_mm: Annotated[float, Field(gt=0)] = 1600.0
    pitch_tag: Name = "pitch_mm"


class GaugeChannel(Strict):
    """One gauge measurement: ``gain * <follows> + offset + N(0, noise)``, pushed out by ``outlier`` on a
    reject part."""

    follows: TagRef | None = None
    gain: float = 1.0
    offset: float = 0.0
    noise: Annotated[float, Field(ge=0)] = 0.0
    outlier: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="how far a reject part lands from the true value; default outlier_sigmas*noise",
    )


class GaugeSettings(Strict):
    """A simulated gauge: measuring time, the share of reject parts and how each channel is computed."""

    measure_s: Seconds = 0.3
    outlier_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    outlier_sigmas: Annotated[float, Field(gt=0)] = 10.0
    channels: dict[Name, GaugeChannel] = Field(default_factory=dict)

    def outlier_delta(self, channel: str) -> float:
        """Distance an outlier puts between the measured and the true value of ``channel`` (0: never)."""
        spec = self.channels[channel]
        if spec.outlier is not None:
            return spec.outlier
        return self.outlier_sigmas * spec.noise


class IoSettings(Strict):
    """Simulated plain inputs (the safety PLC's outputs to the cell): values only, set by fault injection."""


ProfileSettings = (
    RobotSettings | ToolChangerSettings | FixtureSettings | PressSettings | GaugeSettings | IoSettings
)

SETTINGS_MODELS: dict[ProfileKind, type[ProfileSettings]] = {
    ProfileKind.ROBOT: RobotSettings,
    ProfileKind.TOOL_CHANGER: ToolChangerSettings,
    ProfileKind.FIXTURE: FixtureSettings,
    ProfileKind.PRESS: PressSettings,
    ProfileKind.GAUGE: GaugeSettings,
    ProfileKind.IO: IoSettings,
}


class DeviceOverride(Strict):
    """Per-device tuning: settings merged over the profile's section, and initial tag values."""

    settings: dict[str, Any] = Field(default_factory=dict)
    initial: dict[Name, InitialValue] = Field(default_factory=dict)


class SimsConfig(Strict):
    """The simulator behaviour file: one section per profile, optional per-device overrides."""

    robot: RobotSettings = RobotSettings()
    tool_changer: ToolChangerSettings = ToolChangerSettings()
    fixture: FixtureSettings = FixtureSettings()
    press: PressSettings = PressSettings()
    gauge: GaugeSettings = GaugeSettings()
    io: IoSettings = IoSettings()
    devices: dict[Name, DeviceOverride] = Field(default_factory=dict)

    def settings_for(self, device: str, profile: ProfileKind) -> ProfileSettings:
        """Settings of one device: its profile's section with the device's overrides applied."""
        base: ProfileSettings = getattr(self, profile.value)
        override = self.devices.get(device)
        if override is None or not override.settings:
            return base
        model = SETTINGS_MODELS[profile]
        return model.model_validate({**base.model_dump(exclude_unset=False), **override.settings})

    def initial_for(self, device: str) -> dict[str, InitialValue]:
        """Initial tag values declared for ``device`` (empty when none)."""
        override = self.devices.get(device)
        return dict(override.initial) if override else {}

    def issues_against(self, cell: CellConfig, file: str = "sims.yaml") -> list[ConfigIssue]:
        """Everything in this file that does not fit ``cell`` (unknown devices, tags, channels)."""
        issues: list[ConfigIssue] = []
        for name, override in self.devices.items():
            where = f"devices.{name}"
            dev = cell.devices.get(name)
            if dev is None:
                issues.append(ConfigIssue(file, None, where, "no such device in the cell file"))
                continue
            try:
                self.settings_for(name, dev.profile)
            except ValidationError as exc:
                for err in exc.errors():
                    path = ".".join(str(p) for p in err["loc"])
                    issues.append(ConfigIssue(file, None, f"{where}.settings.{path}", err["msg"]))
            for tag in override.initial:
                if tag not in dev.tags:
                    issues.append(
                        ConfigIssue(file, None, f"{where}.initial.{tag}", "no such tag on the device")
                    )
        for gauge in cell.devices_of(ProfileKind.GAUGE):
            try:
                chosen = self.settings_for(gauge, ProfileKind.GAUGE)
            except ValidationError:
                continue  # already reported with the device's overrides
            assert isinstance(chosen, GaugeSettings)
            for channel, spec in chosen.channels.items():
                where = f"gauge.channels.{channel}"
                channel_tag = cell.devices[gauge].tags.get(channel)
                if channel_tag is None:
                    issues.append(ConfigIssue(file, None, where, f"gauge {gauge!r} has no tag {channel!r}"))
                elif channel_tag.datatype not in (Datatype.FLOAT32, Datatype.FLOAT64):
                    issues.append(ConfigIssue(file, None, where, f"tag {gauge}.{channel} is not a float"))
                if spec.follows is not None:
                    dev_name, _, tag_name = spec.follows.partition(".")
                    source = cell.devices.get(dev_name)
                    if source is None or tag_name not in source.tags:
                        issues.append(
                            ConfigIssue(file, None, f"{where}.follows", f"{spec.follows!r} is not a cell tag")
                        )
        return issues

    def check(self, cell: CellConfig, file: str = "sims.yaml") -> None:
        """Raise ConfigError listing every mismatch between this file and ``cell``."""
        issues = self.issues_against(cell, file)
        if issues:
            raise ConfigError(issues)


def read_yaml(path: Path) -> Any:
    """Parse one YAML file safely; ConfigError naming the file when it cannot be read or parsed."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), None, "", f"cannot read: {exc.strerror}")]) from exc
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(str(path), line, "", f"not valid YAML: {exc}")]) from exc


def validation_issues(exc: ValidationError, file: str) -> list[ConfigIssue]:
    """Turn a pydantic error into located issues (without line numbers)."""
    return [ConfigIssue(file, None, ".".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()]


def load_sims_config(path: str | Path) -> SimsConfig:
    """Read and validate a sims file; ConfigError with every issue when it is invalid."""
    file = Path(path)
    data = read_yaml(file)
    try:
        return SimsConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(validation_issues(exc, str(file))) from exc
