"""Load a cell file and its recipe files into validated models, reporting every problem by file and line.

Reading is three passes. YAML is parsed with ruamel's round-trip loader into plain Python data plus an index
of the line of every key and list item (the only place ruamel and its ``Any`` are touched). The data is
validated by the pydantic models, and each error's ``loc`` is looked up in that index. Then the cross-checks
the models cannot make alone run: profile slots bound to suitable tags, Modbus registers that overlap, and
recipes that name devices, tools, programs, axes and tags the cell has. Every issue in every file is collected
before one :class:`~cellctl.errors.ConfigError` is raised; nothing here touches a device.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import stat
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from cellctl.core.devices import (
    Handshake,
    MethodSlot,
    ProfileKind,
    ValueKind,
    axis_actual_tag,
    axis_setpoint_tag,
    profile_methods,
    profile_slots,
)
from cellctl.errors import ConfigError, ConfigIssue
from cellctl.schema.cell import (
    FLOAT_TYPES,
    INT_TYPES,
    LOCATED_ERROR,
    NAME_PATTERN,
    Access,
    CellConfig,
    Datatype,
    DeviceConfig,
    ModbusTable,
    MqttConfig,
    SecurityPolicy,
    StepKind,
    StepTemplate,
    TagConfig,
    register_count,
    value_kind,
)
from cellctl.schema.ordering import OrderCycle, step_order
from cellctl.schema.recipe import (
    TAGREF_PATTERN,
    Characteristic,
    DeviceSetup,
    OperatorStep,
    Parameter,
    Recipe,
)
from cellctl.schema.secrets import SecretFileError, read_secret_file

__all__ = [
    "CELL_FILE_NAME",
    "LoadedConfig",
    "format_issues",
    "load_cell_file",
    "load_config",
    "load_recipe_file",
    "warnings",
]

CELL_FILE_NAME = "cell.yaml"
"""The cell file looked for when :func:`load_config` is given a directory."""

Key = str | int
YamlPath = tuple[Key, ...]
Loc = Sequence[Key]
M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------------------------------
# The loaded configuration
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedConfig:
    """A validated cell and its recipes, with the files they came from."""

    cell: CellConfig
    recipes: dict[str, Recipe]
    cell_file: Path
    recipe_files: dict[str, Path]
    # Line indexes of the recipe files, so with_cell can still point at recipe lines.
    _recipe_sources: dict[str, _Source] = field(default_factory=dict, repr=False, compare=False)
    # Line index of the cell file, so warnings point at lines too.
    _cell_source: _Source | None = field(default=None, repr=False, compare=False)

    def resolve(self, relative: str | Path) -> Path:
        """``relative`` taken from the cell file's folder; an absolute path is returned unchanged."""
        path = Path(relative)
        # normpath, not resolve(): '..' is folded for logs, symlinks stay as the person wrote them.
        return path if path.is_absolute() else Path(os.path.normpath(self.cell_file.parent / path))

    def with_cell(self, cell: CellConfig) -> LoadedConfig:
        """The same recipes with another cell model (e.g. endpoints rewritten for simulators on free ports).

        The new cell goes through the cross-checks a loaded one does; raises ConfigError if it does not fit.
        """
        source = _Source(f"<cell replacing {_display(self.cell_file)}>")
        issues = _check_devices(cell.devices, source)
        for variant, recipe in self.recipes.items():
            recipe_source = self._recipe_sources.get(variant) or _Source(_display(self.recipe_files[variant]))
            parts = _RecipeParts.of(recipe)
            issues += _check_recipe(parts, cell.devices, frozenset(), recipe_source)
            issues += _check_operator_steps(
                parts, cell.devices, cell.changeover.steps, frozenset(), recipe_source
            )
        if issues:
            raise ConfigError(issues)
        return dataclasses.replace(self, cell=cell)


def format_issues(err: ConfigError) -> str:
    """Every issue of ``err`` on its own line (``file:line: path: message``), then a count."""
    count = len(err.issues)
    lines = [str(issue) for issue in err.issues]
    lines.append(f"{count} problem{'' if count == 1 else 's'} found")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> LoadedConfig:
    """Load ``path`` (a folder holding ``cell.yaml``, or a cell file) and every recipe in its recipes folder.

    Raises ConfigError carrying every issue found in any of the files.
    """
    given = Path(path)
    cell_file = (given / CELL_FILE_NAME if given.is_dir() else given).resolve()
    cell_doc, issues = _parse(cell_file)
    if cell_doc is None:
        # Without the cell file, which recipes folder it names is unknown.
        raise ConfigError(issues)
    checked = _check_cell(cell_doc)
    issues += checked.issues
    issues += _check_security_files(checked.devices, cell_file.parent, cell_doc.source)
    if checked.cell is not None:
        issues += _check_mqtt_files(checked.cell.mqtt, cell_file.parent, cell_doc.source)
    recipes = _Recipes()
    if checked.recipes_dir is not None:
        recipes_dir = (cell_file.parent / checked.recipes_dir).resolve()
        if not recipes_dir.is_dir():
            message = f"recipes folder {_display(recipes_dir)} does not exist"
            issues.append(cell_doc.source.issue(("recipes_dir",), message))
        else:
            for recipe_file in sorted(p.resolve() for p in recipes_dir.glob("*.yaml")):
                # recipes_dir may be the cell file's own folder: the cell file is not a recipe.
                if recipe_file != cell_file:
                    issues += recipes.add(recipe_file, checked)
    if issues or checked.cell is None:
        raise ConfigError(_in_file_order(issues))
    return LoadedConfig(
        cell=checked.cell,
        recipes=recipes.recipes,
        cell_file=cell_file,
        recipe_files=recipes.files,
        _recipe_sources=recipes.sources,
        _cell_source=cell_doc.source,
    )


def warnings(loaded: LoadedConfig) -> list[ConfigIssue]:
    """What is valid but unsafe in a loaded cell, located like errors: every OPC UA device on security policy
    None (said or defaulted), a password sent without encryption, a private key others can read, telemetry
    to a broker off this machine without TLS, a broker password written in the cell file or sent without TLS.

    ``cellctl check`` prints these and still exits 0; ``cellctl run`` logs them at start.
    """
    source = loaded._cell_source or _Source(_display(loaded.cell_file))
    found: list[ConfigIssue] = []
    for name, device in loaded.cell.devices.items():
        if device.driver != "opcua":
            continue
        security = device.security
        at: YamlPath = ("devices", name)
        if security is None or security.policy is SecurityPolicy.NONE:
            said = " (it has no 'security' block)" if security is None else ""
            found.append(
                source.issue(
                    (*at, "security", "policy") if security is not None else at,
                    f"OPC UA device {name!r} connects with security policy None{said}: its traffic is "
                    "neither signed nor encrypted and the server is not authenticated",
                )
            )
            if security is not None and security.password is not None:
                found.append(
                    source.issue((*at, "security", "password"), f"{name!r} sends its password unencrypted")
                )
        elif security.private_key is not None:
            key = loaded.resolve(security.private_key)
            try:
                mode = key.stat().st_mode
            except OSError:
                continue  # a missing key is an error of load_config already
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                found.append(
                    source.issue(
                        (*at, "security", "private_key"),
                        f"private key {_display(key)} can be read by others "
                        f"(mode {stat.S_IMODE(mode):o}): chmod 600 it",
                    )
                )
    found += _mqtt_warnings(loaded, source)
    return found


def _mqtt_warnings(loaded: LoadedConfig, source: _Source) -> list[ConfigIssue]:
    mqtt = loaded.cell.mqtt
    found: list[ConfigIssue] = []
    if not mqtt.enabled:
        return found
    if mqtt.tls is None and not _is_loopback(mqtt.host):
        found.append(
            source.issue(
                ("mqtt", "host"),
                f"telemetry goes to {mqtt.host} without TLS: it is not encrypted and the broker is not "
                "authenticated (add an mqtt.tls block; TLS listeners are usually on port 8883)",
            )
        )
    if mqtt.password is not None:
        found.append(
            source.issue(
                ("mqtt", "password"),
                "the broker password is written in the cell file: put it in a file of its own (mode 600) "
                "and name it in mqtt.password_file",
            )
        )
    if (mqtt.password is not None or mqtt.password_file is not None) and mqtt.tls is None:
        found.append(
            source.issue(
                ("mqtt", "password_file" if mqtt.password is None else "password"),
                "the broker password is sent without encryption: add an mqtt.tls block",
            )
        )
    if mqtt.tls is not None and mqtt.tls.key_file is not None:
        key = loaded.resolve(mqtt.tls.key_file)
        try:
            mode = key.stat().st_mode
        except OSError:
            return found  # a missing key is an error of load_config already
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            found.append(
                source.issue(
                    ("mqtt", "tls", "key_file"),
                    f"private key {_display(key)} can be read by others (mode {stat.S_IMODE(mode):o}): "
                    "chmod 600 it",
                )
            )
    return found


def _is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: traffic that never leaves the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_mqtt_files(mqtt: MqttConfig, folder: Path, source: _Source) -> list[ConfigIssue]:
    """The broker's TLS files exist and its password file is usable (relative to the cell file)."""
    issues: list[ConfigIssue] = []
    if mqtt.tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(mqtt.tls, key)
            if value is None:
                continue
            path = Path(os.path.normpath(folder / value))
            if not path.is_file():
                message = f"{key.removesuffix('_file')} file {_display(path)} does not exist"
                issues.append(source.issue(("mqtt", "tls", key), message))
    if mqtt.password_file is not None:
        try:
            read_secret_file(Path(os.path.normpath(folder / mqtt.password_file)))
        except SecretFileError as exc:
            issues.append(source.issue(("mqtt", "password_file"), str(exc)))
    return issues


def _check_security_files(
    devices: Mapping[str, DeviceConfig], folder: Path, source: _Source
) -> list[ConfigIssue]:
    """The certificate, key and trust folder an OPC UA device names exist (relative to the cell file)."""
    issues: list[ConfigIssue] = []
    for name, device in devices.items():
        security = device.security
        if security is None:
            continue
        wanted = (
            ("certificate", security.certificate, False),
            ("private_key", security.private_key, False),
            ("trust_dir", security.trust_dir, True),
        )
        for key, value, is_dir in wanted:
            if value is None:
                continue
            path = Path(os.path.normpath(folder / value))
            if is_dir and not path.is_dir():
                message = f"trust folder {_display(path)} does not exist"
            elif not is_dir and not path.is_file():
                message = f"{key.replace('_', ' ')} file {_display(path)} does not exist"
            else:
                continue
            issues.append(source.issue(("devices", name, "security", key), message))
    return issues


@dataclass
class _Recipes:
    """The recipes read so far, by variant."""

    recipes: dict[str, Recipe] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, _Source] = field(default_factory=dict)
    # Every file naming a variant, valid or not, so a duplicate is found even beside an invalid recipe.
    claimed: dict[str, Path] = field(default_factory=dict)

    def add(self, file: Path, cell: _CheckedCell) -> list[ConfigIssue]:
        """Read one recipe file, check it against the cell, keep it if valid; return its issues."""
        doc, issues = _parse(file)
        if doc is None:
            return issues
        recipe, parts, more = _validate_recipe(doc)
        issues += more
        if cell.devices_known:
            # The templates are known when the cell file is valid: only then are cycles through them checked.
            templates = cell.cell.changeover.steps if cell.cell is not None else None
            issues += _check_recipe(parts, cell.devices, cell.broken_devices, doc.source)
            issues += _check_operator_steps(parts, cell.devices, templates, cell.broken_devices, doc.source)
        if parts.variant is None:
            return issues
        if parts.variant in self.claimed:
            other = _display(self.claimed[parts.variant])
            message = f"variant {parts.variant!r} is defined in {other} already"
            return [*issues, doc.source.issue(("variant",), message)]
        self.claimed[parts.variant] = file
        if recipe is not None:
            self.recipes[recipe.variant] = recipe
            self.files[recipe.variant] = file
            self.sources[recipe.variant] = doc.source
        return issues


def load_cell_file(path: str | Path) -> CellConfig:
    """Load and check one cell file on its own (its recipes are not read); raises ConfigError."""
    doc, issues = _parse(Path(path).resolve())
    if doc is None:
        raise ConfigError(issues)
    checked = _check_cell(doc)
    issues += checked.issues
    if issues or checked.cell is None:
        raise ConfigError(_in_file_order(issues))
    return checked.cell


def load_recipe_file(path: str | Path) -> Recipe:
    """Load one recipe file against the recipe model alone (no cell to check it with); raises ConfigError."""
    doc, issues = _parse(Path(path).resolve())
    if doc is None:
        raise ConfigError(issues)
    recipe, _, more = _validate_recipe(doc)
    issues += more
    if issues or recipe is None:
        raise ConfigError(_in_file_order(issues))
    return recipe


def _in_file_order(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    files: dict[str, int] = {}
    for issue in issues:
        files.setdefault(issue.file, len(files))
    return sorted(issues, key=lambda i: (files[i.file], i.line or 0))


def _display(path: Path) -> str:
    """A path as people read it: relative to the working folder when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except (ValueError, OSError):  # not below it, or the working folder is gone
        return str(path)


# ----------------------------------------------------------------------------------------------------
# YAML: plain data plus the line of every key (the only code that touches ruamel's untyped objects)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    """Where issues about one file go: its name and the line of every key and list item in it."""

    file: str
    lines: Mapping[YamlPath, int] = field(default_factory=dict)

    def known(self, loc: Loc) -> YamlPath:
        """The longest start of ``loc`` that is in the file."""
        parts = tuple(loc)
        for n in range(len(parts), 0, -1):
            if parts[:n] in self.lines:
                return parts[:n]
        return ()

    def issue(self, loc: Loc, message: str) -> ConfigIssue:
        """An issue about ``loc``, on the line of the deepest part of it that is in the file."""
        return ConfigIssue(self.file, self.lines.get(self.known(loc)), _dotted(loc), message)


@dataclass(frozen=True, slots=True)
class _Document:
    """A parsed YAML file."""

    data: object
    source: _Source


@dataclass(frozen=True, slots=True)
class _Duplicate:
    """A key found twice in one mapping (the first value is kept)."""

    mapping: object  # held so its id() stays unique until the paths are known
    key: object
    line: int
    first_line: int | None


class _RecordingConstructor(RoundTripConstructor):
    """Round-trip constructor that records duplicate keys instead of stopping at the first one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.duplicates: list[_Duplicate] = []

    def check_mapping_key(self, node: Any, key_node: Any, mapping: Any, key: Any, value: Any) -> bool:
        if key not in mapping:
            return True
        self.duplicates.append(
            _Duplicate(mapping, key, int(key_node.start_mark.line) + 1, _key_line(mapping, key))
        )
        return False


def _parse(path: Path) -> tuple[_Document | None, list[ConfigIssue]]:
    """Parse one YAML file; a file that cannot be read or parsed gives issues and no document."""
    file = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [ConfigIssue(file, None, "", "no such file")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ConfigIssue(file, None, "", f"cannot read the file: {exc}")]
    yaml = YAML(typ="rt")
    yaml.Constructor = _RecordingConstructor
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        return None, [_syntax_issue(file, exc, last_line=max(1, len(text.splitlines())))]
    except YAMLError as exc:
        return None, [ConfigIssue(file, None, "", f"invalid YAML: {exc}")]
    constructor = yaml.constructor
    duplicates = constructor.duplicates if isinstance(constructor, _RecordingConstructor) else []

    index = _Indexer()
    data = index.plain(root, (), _node_line(root) or 1)
    source = _Source(file, index.lines)
    issues = [source.issue((), message) for message in index.problems]
    for dup in duplicates:
        where: YamlPath = (*index.map_paths.get(id(dup.mapping), ()), _plain_key(dup.key))
        first = f" (first on line {dup.first_line})" if dup.first_line is not None else ""
        issues.append(ConfigIssue(file, dup.line, _dotted(where), f"duplicate key {str(dup.key)!r}{first}"))
    if data is None:
        issues.append(ConfigIssue(file, None, "", "the file is empty"))
        return None, issues
    return _Document(data, source), issues


def _syntax_issue(file: str, exc: MarkedYAMLError, last_line: int) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    # At the end of the stream the mark sits on the line after the last one.
    line = min(int(mark.line) + 1, last_line) if mark is not None else None
    context = str(exc.context or "")
    if context and exc.context_mark is not None and exc.context_mark is not mark:
        context += f" (from line {int(exc.context_mark.line) + 1})"
    what = ": ".join(part for part in (context, str(exc.problem or "")) if part)
    return ConfigIssue(file, line, "", f"YAML syntax error: {what or exc}")


class _Indexer:
    """Turns ruamel's commented containers into plain dicts, lists and scalars, noting every key's line."""

    def __init__(self) -> None:
        self.lines: dict[YamlPath, int] = {}
        self.map_paths: dict[int, YamlPath] = {}
        self.problems: list[str] = []
        self._open: set[int] = set()

    def plain(self, node: Any, path: YamlPath, line: int) -> object:
        self.lines[path] = line
        if not isinstance(node, dict | list):
            return _plain_scalar(node)
        if id(node) in self._open:
            self.problems.append(f"{_dotted(path) or 'the document'} contains itself through an alias")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, dict):
                self.map_paths[id(node)] = path
                return {
                    _plain_key(k): self.plain(v, (*path, _plain_key(k)), _key_line(node, k) or line)
                    for k, v in node.items()
                }
            return [self.plain(v, (*path, i), _item_line(node, i) or line) for i, v in enumerate(node)]
        finally:
            self._open.discard(id(node))


def _plain_scalar(value: Any) -> object:
    # ruamel keeps formatting in subclasses (ScalarFloat, ScalarInt, ScalarBoolean, ...); models and hashes
    # want the plain types.
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, ScalarBoolean):
        return bool(value)
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    return value


def _plain_key(key: Any) -> Key:
    plain = _plain_scalar(key)
    return plain if isinstance(plain, str | int) and not isinstance(plain, bool) else str(plain)


def _key_line(mapping: Any, key: Any) -> int | None:
    try:
        return int(mapping.lc.key(key)[0]) + 1
    except (AttributeError, KeyError, TypeError):  # merged keys and plain dicts carry no position
        return None


def _item_line(sequence: Any, index: int) -> int | None:
    try:
        return int(sequence.lc.item(index)[0]) + 1
    except (AttributeError, KeyError, TypeError):
        return None


def _node_line(node: Any) -> int | None:
    try:
        return int(node.lc.line) + 1
    except (AttributeError, TypeError):
        return None


def _dotted(loc: Iterable[object]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# ----------------------------------------------------------------------------------------------------
# pydantic errors -> issues
# ----------------------------------------------------------------------------------------------------


def _validation_issues(
    errors: Iterable[ErrorDetails], model: type[BaseModel], source: _Source
) -> list[ConfigIssue]:
    # One place may get several errors (one per member of a union): merge them into one issue.
    merged: dict[tuple[int | None, str], list[str]] = {}
    for err in errors:
        loc: YamlPath = tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == LOCATED_ERROR:
            loc = (*loc, *ctx.get("below", ()))
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
        if kind not in ("missing", LOCATED_ERROR):
            # What is left below the last key in the file names a union member, not a key.
            loc = source.known(loc)
        issue = source.issue(loc, _message(err, model, loc))
        messages = merged.setdefault((issue.line, issue.path), [])
        if issue.message not in messages:
            messages.append(issue.message)
    return [
        ConfigIssue(source.file, line, path, " | ".join(messages))
        for (line, path), messages in merged.items()
    ]


def _message(err: ErrorDetails, model: type[BaseModel], loc: YamlPath) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == LOCATED_ERROR:
        return str(ctx.get("reason", err["msg"]))
    if kind == "missing":
        return f"required key {str(loc[-1])!r} is missing" if loc else "required key is missing"
    if kind == "extra_forbidden":
        return _unknown_key(str(loc[-1]) if loc else "?", _fields_at(model, loc[:-1]))
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        return f"{value!r} is not a valid name: letters, digits, '_' and '-', starting with a letter or digit"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == TAGREF_PATTERN:
        return f"{value!r} is not a tag reference: write device.tag"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_short(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {_short(value)}"
    if kind == "value_error":  # our validators' own words, which name the value where it helps
        return err["msg"].removeprefix("Value error, ")
    message = err["msg"]
    if isinstance(value, str | int | float | bool) or value is None:
        message += f" (got {_short(value)})"
    return message


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    if allowed:
        return f"unknown key {key!r}; expected one of: {', '.join(allowed)}"
    return f"unknown key {key!r}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fields_at(model: type[BaseModel], loc: YamlPath) -> list[str]:
    """Field names of the model found at ``loc`` below ``model`` (empty when there is none)."""
    current: object = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields
            if not isinstance(part, str) or part not in fields:
                return []
            current = fields[part].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is tuple:
            current = get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: object) -> object:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


# ----------------------------------------------------------------------------------------------------
# The cell file
# ----------------------------------------------------------------------------------------------------


@dataclass
class _CheckedCell:
    """What checking the cell file found: the model if valid, the devices that are, and every issue."""

    cell: CellConfig | None = None
    devices: dict[str, DeviceConfig] = field(default_factory=dict)
    # Devices named in the file that are invalid: recipes naming them are not checked against them.
    broken_devices: frozenset[str] = frozenset()
    devices_known: bool = False
    recipes_dir: str | None = None
    issues: list[ConfigIssue] = field(default_factory=list)


def _check_cell(doc: _Document) -> _CheckedCell:
    checked = _CheckedCell()
    try:
        cell = CellConfig.model_validate(doc.data)
    except ValidationError as exc:
        errors = exc.errors()
        checked.issues += _validation_issues(errors, CellConfig, doc.source)
        _salvage_devices(doc.data, errors, checked)
    else:
        checked.cell = cell
        checked.devices = dict(cell.devices)
        checked.devices_known = True
        checked.recipes_dir = cell.recipes_dir
    checked.issues += _check_devices(checked.devices, doc.source)
    return checked


def _salvage_devices(data: object, errors: list[ErrorDetails], checked: _CheckedCell) -> None:
    """Keep the valid devices of an invalid cell, so their cross-checks and the recipes' still run."""
    if not isinstance(data, dict):
        return  # not a cell at all: which recipes it would have had is unknown
    recipes_dir = data.get("recipes_dir", "recipes")
    checked.recipes_dir = recipes_dir if isinstance(recipes_dir, str) else None
    salvaged = _salvage(data, "devices", DeviceConfig, errors)
    if salvaged is not None:
        checked.devices, checked.broken_devices = salvaged
        checked.devices_known = True


def _salvage(
    data: object, section: str, model: type[M], errors: list[ErrorDetails]
) -> tuple[dict[str, M], frozenset[str]] | None:
    """The entries of mapping ``section`` of an invalid file that are valid on their own, and the names of
    those that are not; None when the section itself is wrong."""
    raw = data.get(section, {}) if isinstance(data, dict) else None
    if not isinstance(raw, dict) or any(tuple(e["loc"]) == (section,) for e in errors):
        return None
    broken = {str(e["loc"][1]) for e in errors if len(e["loc"]) > 1 and e["loc"][0] == section}
    good: dict[str, M] = {}
    for name, entry in raw.items():
        if str(name) in broken:
            continue
        try:
            good[str(name)] = model.model_validate(entry)
        except ValidationError:
            broken.add(str(name))
    return good, frozenset(broken)


def _fits(kind: ValueKind, datatype: Datatype) -> bool:
    return value_kind(datatype) is kind


def _readable(tag: TagConfig) -> bool:
    return tag.access is not Access.WRITE


def _check_devices(devices: Mapping[str, DeviceConfig], source: _Source) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for name, device in devices.items():
        issues += _check_slots(name, device, source)
        if device.driver == "modbus":
            issues += _check_registers(name, device, source)
    return issues


def _check_slots(name: str, device: DeviceConfig, source: _Source) -> list[ConfigIssue]:
    """Every slot of the device's profile is bound to a tag of a fitting datatype, writable where written,
    and every method its handshake calls is declared with fitting argument datatypes."""
    issues: list[ConfigIssue] = []
    who = f"{device.profile} {name!r}"
    if device.handshake is not Handshake.SIGNAL:
        who += f" ({device.handshake} handshake)"
    for method in profile_methods(device.profile, device.handshake):
        issues += _check_method(name, device, method, who, source)
    for slot in profile_slots(device.profile, device.handshake):
        at = ("devices", name, "tags", slot.name)
        tag = device.tags.get(slot.name)
        if tag is None:
            need = f"a {'writable ' if slot.writable else ''}{slot.kind} tag"
            issues.append(
                source.issue(at, f"{who} has no tag {slot.name!r}: its slot needs {need} ({slot.doc})")
            )
            continue
        if not _fits(slot.kind, tag.datatype):
            issues.append(
                source.issue(
                    (*at, "datatype"),
                    f"slot {slot.name!r} of {who} needs a {slot.kind} tag, not {tag.datatype}",
                )
            )
        if slot.writable and not tag.writable:
            issues.append(
                source.issue(
                    (*at, "access"),
                    f"slot {slot.name!r} of {who} is written by cellctl: access must be 'w' or 'rw', "
                    f"not {tag.access.value!r}",
                )
            )
    return issues


def _kinds(kinds: Sequence[ValueKind]) -> str:
    return "[" + ", ".join(kinds) + "]"


def _check_method(
    name: str, device: DeviceConfig, slot: MethodSlot, who: str, source: _Source
) -> list[ConfigIssue]:
    """The method ``slot`` is declared, with one of its accepted input signatures and its outputs."""
    at = ("devices", name, "methods", slot.name)
    accepted = " or ".join(_kinds(inputs) for inputs in slot.inputs)
    method = device.methods.get(slot.name)
    if method is None:
        return [
            source.issue(
                at,
                f"{who} has no method {slot.name!r}: its handshake calls it with inputs {accepted} and "
                f"outputs {_kinds(slot.outputs)} ({slot.doc})",
            )
        ]
    issues: list[ConfigIssue] = []
    inputs = tuple(value_kind(d) for d in method.inputs)
    if inputs not in slot.inputs:
        issues.append(
            source.issue(
                (*at, "inputs"),
                f"method {slot.name!r} of {who} takes inputs {accepted}, not {_kinds(inputs)}",
            )
        )
    outputs = tuple(value_kind(d) for d in method.outputs)
    if outputs != slot.outputs:
        issues.append(
            source.issue(
                (*at, "outputs"),
                f"method {slot.name!r} of {who} returns outputs {_kinds(slot.outputs)}, "
                f"not {_kinds(outputs)}",
            )
        )
    return issues


_BIT_TABLES = frozenset({ModbusTable.COIL, ModbusTable.DISCRETE_INPUT})
_TABLE_END = 65535


@dataclass(frozen=True, slots=True)
class _Span:
    """The addresses a Modbus tag occupies in its table."""

    tag: str
    table: ModbusTable
    first: int
    last: int
    bit: int | None  # a bit inside a register; None for whole registers, coils and discrete inputs

    def clashes(self, other: _Span) -> bool:
        if self.table is not other.table or self.last < other.first or other.last < self.first:
            return False
        if self.bit is not None and other.bit is not None:
            return self.bit == other.bit  # bit tags may share a register, not a bit
        return True

    def __str__(self) -> str:
        where = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        bit = f" bit {self.bit}" if self.bit is not None else ""
        return f"{self.table} {where}{bit}"


def _span(name: str, tag: TagConfig) -> _Span | None:
    if tag.table is None or tag.address is None:
        return None
    if tag.table in _BIT_TABLES:
        return _Span(name, tag.table, tag.address, tag.address, None)
    if tag.bit is not None:
        return _Span(name, tag.table, tag.address, tag.address, tag.bit)
    # A string in a register table always has a length: TagConfig validates it.
    width = register_count(tag.datatype, tag.length)
    return _Span(name, tag.table, tag.address, tag.address + width - 1, None)


def _check_registers(name: str, device: DeviceConfig, source: _Source) -> list[ConfigIssue]:
    """No two tags of one Modbus device share an address, except bit tags in one register."""
    issues: list[ConfigIssue] = []
    spans: list[_Span] = []
    for tag_name, tag in device.tags.items():
        span = _span(tag_name, tag)
        if span is None:
            continue
        at = ("devices", name, "tags", tag_name, "address")
        if span.last > _TABLE_END:
            issues.append(source.issue(at, f"tag {tag_name!r} ({span}) runs past the end of the table"))
        other = next((s for s in spans if s.clashes(span)), None)
        if other is not None:
            issues.append(
                source.issue(
                    at, f"tag {tag_name!r} ({span}) overlaps tag {other.tag!r} ({other}) of {name!r}"
                )
            )
        spans.append(span)
    return issues


# ----------------------------------------------------------------------------------------------------
# Recipes against the cell
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RecipeParts:
    """The valid parts of a recipe file (all of them when the recipe is valid)."""

    variant: str | None
    setup: Mapping[str, DeviceSetup]
    parameters: Mapping[str, Parameter]
    quality: Mapping[str, Characteristic]
    operator_steps: Mapping[str, OperatorStep] = field(default_factory=dict)

    @classmethod
    def of(cls, recipe: Recipe) -> _RecipeParts:
        return cls(recipe.variant, recipe.setup, recipe.parameters, recipe.quality, recipe.operator_steps)


def _validate_recipe(doc: _Document) -> tuple[Recipe | None, _RecipeParts, list[ConfigIssue]]:
    """The recipe model, or the parts of an invalid recipe that can still be checked against the cell."""
    try:
        recipe = Recipe.model_validate(doc.data)
    except ValidationError as exc:
        errors = exc.errors()
        issues = _validation_issues(errors, Recipe, doc.source)
        raw = doc.data if isinstance(doc.data, dict) else {}
        variant = raw.get("variant")
        variant_ok = isinstance(variant, str) and not any(e["loc"][:1] == ("variant",) for e in errors)
        parts = _RecipeParts(
            variant if variant_ok and isinstance(variant, str) else None,
            (_salvage(raw, "setup", DeviceSetup, errors) or ({}, frozenset()))[0],
            (_salvage(raw, "parameters", Parameter, errors) or ({}, frozenset()))[0],
            (_salvage(raw, "quality", Characteristic, errors) or ({}, frozenset()))[0],
            # The recipe-wide checks of operator steps failed or were not reached: only devices are checked.
            (_salvage(raw, "operator_steps", OperatorStep, errors) or ({}, frozenset()))[0],
        )
        return None, parts, issues
    return recipe, _RecipeParts.of(recipe), []


def _check_recipe(
    recipe: _RecipeParts, devices: Mapping[str, DeviceConfig], broken: frozenset[str], source: _Source
) -> list[ConfigIssue]:
    """The recipe's setup, parameters and quality checks name things the cell has, of fitting kinds."""
    issues: list[ConfigIssue] = []
    known = ", ".join(devices) or "none"
    for dev_name, setup in recipe.setup.items():
        at: YamlPath = ("setup", dev_name)
        device = devices.get(dev_name)
        if device is None:
            if dev_name not in broken:
                issues.append(source.issue(at, f"unknown device {dev_name!r} (the cell has: {known})"))
            continue
        who = f"{device.profile} {dev_name!r}"
        if setup.tool is not None:
            if device.profile is not ProfileKind.TOOL_CHANGER:
                issues.append(
                    source.issue(
                        (*at, "tool"), f"'tool' is for a tool_changer; {dev_name!r} is a {device.profile}"
                    )
                )
            elif setup.tool not in device.tools:
                tools = ", ".join(device.tools) or "none"
                issues.append(
                    source.issue(
                        (*at, "tool"), f"tool {setup.tool!r} is not among the tools of {who} ({tools})"
                    )
                )
        if setup.program is not None and device.profile is not ProfileKind.ROBOT:
            issues.append(
                source.issue(
                    (*at, "program"), f"'program' is for a robot; {dev_name!r} is a {device.profile}"
                )
            )
        if setup.positions and device.profile is not ProfileKind.FIXTURE:
            issues.append(
                source.issue(
                    (*at, "positions"), f"'positions' is for a fixture; {dev_name!r} is a {device.profile}"
                )
            )
        elif setup.positions:
            for axis in setup.positions:
                problems = _axis_problems(axis, device)
                if problems:
                    issues.append(
                        source.issue(
                            (*at, "positions", axis), f"axis {axis!r} of {who} needs " + "; ".join(problems)
                        )
                    )
        for tag_name, value in setup.setpoints.items():
            problem = _setpoint_problem(tag_name, value, device)
            if problem:
                issues.append(source.issue((*at, "setpoints", tag_name), f"{who}: {problem}"))

    for param_name, param in recipe.parameters.items():
        resolved = _resolve_ref(param.target, devices, broken)
        at = ("parameters", param_name, "target")
        if isinstance(resolved, str):
            issues.append(source.issue(at, resolved))
        elif resolved is not None:
            device, tag = resolved
            tag_name = param.target.split(".", 1)[1]
            if not tag.writable:
                issues.append(
                    source.issue(at, f"{param.target!r} is read-only: a parameter target is written")
                )
            if tag.datatype not in INT_TYPES | FLOAT_TYPES:
                issues.append(
                    source.issue(at, f"{param.target!r} is {tag.datatype}: a parameter needs a number")
                )
            if _is_slot(tag_name, device):
                issues.append(source.issue(at, f"{param.target!r} is a handshake tag driven by cellctl"))

    for char_name, char in recipe.quality.items():
        resolved = _resolve_ref(char.source, devices, broken)
        at = ("quality", char_name, "source")
        if isinstance(resolved, str):
            issues.append(source.issue(at, resolved))
        elif resolved is not None:
            device, tag = resolved
            if device.profile is not ProfileKind.GAUGE:
                dev_name = char.source.split(".", 1)[0]
                gauges = ", ".join(n for n, d in devices.items() if d.profile is ProfileKind.GAUGE) or "none"
                issues.append(
                    source.issue(
                        at, f"{dev_name!r} is a {device.profile}, not a gauge (gauges of the cell: {gauges})"
                    )
                )
            if not _readable(tag):
                issues.append(source.issue(at, f"{char.source!r} is write-only: a measurement is read"))
            if tag.datatype not in INT_TYPES | FLOAT_TYPES:
                issues.append(
                    source.issue(at, f"{char.source!r} is {tag.datatype}: a measurement is a number")
                )
    return issues


def _check_operator_steps(
    recipe: _RecipeParts,
    devices: Mapping[str, DeviceConfig],
    templates: Mapping[StepKind, StepTemplate] | None,
    broken: frozenset[str],
    source: _Source,
) -> list[ConfigIssue]:
    """Operator steps name devices the cell has, and their 'after' and 'before' leave the changeover's steps
    an order (with the cell's ``templates`` and a fixture's unclamp, move, clamp)."""
    issues: list[ConfigIssue] = []
    known = ", ".join(devices) or "none"
    for name, step in recipe.operator_steps.items():
        if step.device is not None and step.device not in devices and step.device not in broken:
            issues.append(
                source.issue(
                    ("operator_steps", name, "device"),
                    f"unknown device {step.device!r} (the cell has: {known})",
                )
            )
    if not recipe.operator_steps or templates is None:
        return issues
    try:
        step_order(templates)
    except OrderCycle:
        return issues  # the templates contradict a fixture's sequence: the cell's problem, planning says so
    try:
        step_order(templates, recipe.operator_steps)
    except OrderCycle as exc:
        # The templates alone can be ordered, so the cycle runs through an operator step.
        culprit = next(str(n) for n in exc.cycle if str(n) in recipe.operator_steps)
        step = recipe.operator_steps[culprit]
        key = "before" if step.before else "after"
        cycle = " -> ".join(str(n) for n in exc.cycle)
        issues.append(
            source.issue(
                ("operator_steps", culprit, key),
                f"operator step {culprit!r} closes a cycle with the cell's changeover templates "
                f"(a fixture unclamps, moves, then clamps): {cycle}",
            )
        )
    return issues


def _axis_problems(axis: str, device: DeviceConfig) -> list[str]:
    problems: list[str] = []
    for tag_name, writable in ((axis_setpoint_tag(axis), True), (axis_actual_tag(axis), False)):
        need = f"a {'writable ' if writable else 'readable '}float tag {tag_name!r}"
        tag = device.tags.get(tag_name)
        if tag is None:
            problems.append(f"{need}, which is missing")
        elif tag.datatype not in FLOAT_TYPES:
            problems.append(f"{need}, not {tag.datatype}")
        elif writable and not tag.writable:
            problems.append(f"{need}, not read-only")
        elif not writable and not _readable(tag):
            problems.append(f"{need}, not write-only")
    return problems


def _setpoint_problem(tag_name: str, value: float | int | bool, device: DeviceConfig) -> str | None:
    tag = device.tags.get(tag_name)
    if tag is None:
        return f"no tag {tag_name!r} to set (tags: {', '.join(device.tags)})"
    if _is_slot(tag_name, device):
        return f"{tag_name!r} is a handshake tag driven by cellctl, not a setpoint"
    if not tag.writable:
        return f"{tag_name!r} is read-only (access {tag.access.value!r}): a setpoint is written"
    if isinstance(value, bool):
        fits = tag.datatype is Datatype.BOOL
    elif tag.datatype in INT_TYPES:
        fits = float(value).is_integer()
    else:
        fits = tag.datatype in FLOAT_TYPES
    if not fits:
        return f"value {value!r} does not fit {tag_name!r}, a {tag.datatype} tag"
    return None


def _is_slot(tag_name: str, device: DeviceConfig) -> bool:
    return any(slot.name == tag_name for slot in profile_slots(device.profile, device.handshake))


def _resolve_ref(
    ref: str, devices: Mapping[str, DeviceConfig], broken: frozenset[str]
) -> tuple[DeviceConfig, TagConfig] | str | None:
    """The device and tag ``ref`` names; a message if either is unknown; None if the device is broken."""
    dev_name, tag_name = ref.split(".", 1)
    device = devices.get(dev_name)
    if device is None:
        return None if dev_name in broken else f"unknown device {dev_name!r} in {ref!r}"
    tag = device.tags.get(tag_name)
    if tag is None:
        return f"device {dev_name!r} has no tag {tag_name!r}"
    return device, tag
