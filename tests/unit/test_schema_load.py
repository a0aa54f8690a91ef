"""Loading the cell file and recipes: the shipped configuration, error collection and LoadedConfig."""

from __future__ import annotations

import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellctl.errors import ConfigError, ConfigIssue
from cellctl.schema.cell import CellConfig
from cellctl.schema.load import LoadedConfig, format_issues, load_cell_file, load_config, load_recipe_file

CONFIG = Path(__file__).resolve().parents[2] / "config"
VARIANTS = {"oslo", "bergen", "tromso"}

GAUGE_CELL = """\
    identity: {enterprise: acme, site: s1, area: a1, line: l1, cell: c1}
    devices:
      gauge:
        driver: modbus
        endpoint: tcp://127.0.0.1:1502
        profile: gauge
        tags:
          trigger:  {table: coil, address: 0, datatype: bool, access: rw}
          ready:    {table: discrete_input, address: 0, datatype: bool}
          width_mm: {table: input_register, address: 0, datatype: float32}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(path: Path) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.issues


def where(issues: tuple[ConfigIssue, ...]) -> set[tuple[str, int | None, str]]:
    return {(Path(i.file).name, i.line, i.path) for i in issues}


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped config/ folder, free to break."""
    return Path(shutil.copytree(CONFIG, tmp_path / "config"))


@pytest.fixture
def gauge_cell(tmp_path: Path) -> Path:
    """A small valid cell (one gauge) with an empty recipes folder."""
    (tmp_path / "cell" / "recipes").mkdir(parents=True)
    return write(tmp_path / "cell" / "cell.yaml", GAUGE_CELL)


# --- the shipped configuration


def test_shipped_simulator_config_loads_with_its_three_variants() -> None:
    loaded = load_config(CONFIG)

    assert loaded.cell_file == CONFIG / "cell.yaml"
    assert set(loaded.recipes) == VARIANTS
    assert loaded.recipe_files == {v: CONFIG / "recipes" / f"{v}.yaml" for v in VARIANTS}
    assert all(loaded.recipes[v].variant == v for v in VARIANTS)


def test_shipped_plant_config_loads_the_same_recipes() -> None:
    sim, plant = load_config(CONFIG), load_config(CONFIG / "plant")

    assert plant.cell_file == CONFIG / "plant" / "cell.yaml"
    assert plant.recipe_files == sim.recipe_files
    assert plant.recipes == sim.recipes


def test_simulator_and_plant_cells_differ_only_in_endpoints_and_paths() -> None:
    sim, plant = load_config(CONFIG).cell, load_config(CONFIG / "plant").cell
    where_it_runs = {"mqtt", "store", "api", "recipes_dir"}

    def without_endpoints(cell: CellConfig) -> dict[str, object]:
        dumped = cell.model_dump(exclude=where_it_runs)
        for device in dumped["devices"].values():
            del device["endpoint"]
        return dumped

    assert without_endpoints(sim) == without_endpoints(plant)
    assert [d.endpoint for d in sim.devices.values()] != [d.endpoint for d in plant.devices.values()]


def test_a_cell_file_path_loads_like_its_folder() -> None:
    assert load_config(CONFIG / "cell.yaml") == load_config(CONFIG)
    assert load_config(str(CONFIG)).cell == load_config(CONFIG).cell


def test_load_cell_file_and_load_recipe_file_read_one_file_each() -> None:
    assert load_cell_file(CONFIG / "cell.yaml") == load_config(CONFIG).cell
    assert load_recipe_file(CONFIG / "recipes" / "oslo.yaml").variant == "oslo"


# --- collecting every issue


def test_several_errors_in_one_file_are_all_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    cell = write(
        tmp_path / "cell.yaml",
        """\
        identity: {enterprise: acme, site: s1, area: a1, line: l1, cell: c/1}
        devices:
          gauge:
            driver: modbus
            endpoint: tcp://127.0.0.1:1502
            profile: gauge
            tags:
              trigger:  {table: coil, address: 0, datatype: bool}
              width_mm: {table: input_register, address: 0, datatype: float32}
        mqtt: {port: many}
        """,
    )

    issues = issues_of(cell)

    assert where(issues) == {
        ("cell.yaml", 1, "identity.cell"),
        ("cell.yaml", 7, "devices.gauge.tags.ready"),
        ("cell.yaml", 8, "devices.gauge.tags.trigger.access"),
        ("cell.yaml", 10, "mqtt.port"),
    }
    assert [i.line for i in issues] == sorted(i.line or 0 for i in issues)


def test_issues_in_the_cell_and_in_recipes_come_in_one_error(config_copy: Path) -> None:
    cell = config_copy / "cell.yaml"
    cell.write_text(cell.read_text().replace("cell: cell3}", "cell: cell+3}"))
    oslo = config_copy / "recipes" / "oslo.yaml"
    oslo.write_text(
        oslo.read_text().replace("tool: FOAM-S", "tool: FOAM-XS").replace("version: 3", "version: 0")
    )

    issues = issues_of(config_copy)

    assert where(issues) == {
        ("cell.yaml", 6, "identity.cell"),
        ("oslo.yaml", 4, "version"),
        ("oslo.yaml", 8, "setup.toolchanger.tool"),
    }
    assert [Path(i.file).name for i in issues] == ["cell.yaml", "oslo.yaml", "oslo.yaml"]


def test_recipes_are_checked_against_the_valid_devices_of_an_invalid_cell(config_copy: Path) -> None:
    cell = config_copy / "cell.yaml"
    cell.write_text(cell.read_text().replace("profile: gauge", "profile: gage"))

    issues = issues_of(config_copy)

    # The gauge is broken (reported once); the recipes' quality sources on it are not reported again.
    line = cell.read_text().splitlines().index("    profile: gage") + 1
    assert where(issues) == {("cell.yaml", line, "devices.gauge.profile")}


def test_every_duplicate_key_is_reported_with_both_lines(gauge_cell: Path) -> None:
    gauge_cell.write_text(
        gauge_cell.read_text() + "mqtt: {port: 1883, port: 1884}\nrecipes_dir: recipes\nrecipes_dir: other\n"
    )

    issues = issues_of(gauge_cell)

    assert where(issues) == {("cell.yaml", 11, "mqtt.port"), ("cell.yaml", 13, "recipes_dir")}
    assert {i.message for i in issues} == {
        "duplicate key 'port' (first on line 11)",
        "duplicate key 'recipes_dir' (first on line 12)",
    }


def test_yaml_syntax_error_is_an_issue_with_its_line(gauge_cell: Path) -> None:
    gauge_cell.write_text(gauge_cell.read_text() + "mqtt:\n  host: [broker\n  port: 1883\n")

    (issue,) = issues_of(gauge_cell)

    assert (Path(issue.file).name, issue.line) == ("cell.yaml", 13)
    assert issue.message.startswith("YAML syntax error:")
    assert "from line 12" in issue.message


def test_a_missing_cell_file_is_an_issue(tmp_path: Path) -> None:
    (issue,) = issues_of(tmp_path / "nowhere")

    assert Path(issue.file) == (tmp_path / "nowhere").resolve()
    assert issue.message == "no such file"


def test_an_empty_cell_file_is_an_issue(tmp_path: Path) -> None:
    (issue,) = issues_of(write(tmp_path / "cell.yaml", "# nothing yet\n"))

    assert issue.message == "the file is empty"


def test_a_missing_recipes_folder_is_an_issue_on_recipes_dir(gauge_cell: Path) -> None:
    gauge_cell.write_text(gauge_cell.read_text() + "recipes_dir: recipies\n")

    (issue,) = issues_of(gauge_cell)

    assert (issue.line, issue.path) == (11, "recipes_dir")
    assert "recipies does not exist" in issue.message


def test_recipes_next_to_the_cell_file_do_not_count_the_cell_file(gauge_cell: Path) -> None:
    gauge_cell.write_text(gauge_cell.read_text() + "recipes_dir: .\n")
    write(gauge_cell.parent / "oslo.yaml", "variant: oslo\nversion: 1\nsetup: {}\n")

    loaded = load_config(gauge_cell)

    assert set(loaded.recipes) == {"oslo"}


def test_union_errors_on_one_value_become_one_issue(gauge_cell: Path) -> None:
    write(
        gauge_cell.parent / "recipes" / "oslo.yaml",
        "variant: oslo\nversion: 1\nsetup:\n  gauge: {setpoints: {x: [1]}}\n",
    )

    (issue,) = issues_of(gauge_cell)

    assert (Path(issue.file).name, issue.line, issue.path) == ("oslo.yaml", 4, "setup.gauge.setpoints.x")
    assert "valid number" in issue.message and "valid boolean" in issue.message


def test_issue_text_is_file_line_path_message(gauge_cell: Path) -> None:
    gauge_cell.write_text(gauge_cell.read_text() + "mqtt: {prot: 1883}\n")

    with pytest.raises(ConfigError) as caught:
        load_config(gauge_cell)

    (issue,) = caught.value.issues
    assert str(issue) == f"{issue.file}:11: mqtt.prot: unknown key 'prot' (did you mean 'port'?)"
    assert format_issues(caught.value).splitlines() == [str(issue), "1 problem found"]


SHIPPED_LINES = (CONFIG / "cell.yaml").read_text().splitlines()
OSLO_LINES = (CONFIG / "recipes" / "oslo.yaml").read_text().splitlines()
JUNK = st.sampled_from(["", "  x: 1", "- a", "{", "]", "key: [1, {a: 2}]", "\t", "&a [*a]", "tags: 7", ": :"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cell_edit=st.tuples(st.integers(0, len(SHIPPED_LINES) - 1), JUNK),
    recipe_edit=st.tuples(st.integers(0, len(OSLO_LINES) - 1), JUNK),
)
def test_a_mangled_config_gives_config_errors_and_never_crashes(
    cell_edit: tuple[int, str], recipe_edit: tuple[int, str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(shutil.copytree(CONFIG, Path(tmp) / "config"))
        for file, lines, (index, junk) in (
            (config / "cell.yaml", SHIPPED_LINES, cell_edit),
            (config / "recipes" / "oslo.yaml", OSLO_LINES, recipe_edit),
        ):
            file.write_text("\n".join([*lines[:index], junk, *lines[index + 1 :]]) + "\n")

        try:
            load_config(config)
        except ConfigError as err:
            assert err.issues
            for issue in err.issues:
                assert issue.line is None or 1 <= issue.line <= len(Path(issue.file).read_text().splitlines())


# --- LoadedConfig


def test_resolve_is_relative_to_the_cell_files_folder() -> None:
    sim, plant = load_config(CONFIG), load_config(CONFIG / "plant")

    assert sim.resolve(sim.cell.store.path) == CONFIG.parent / "var" / "sim" / "cellctl.db", "'..' folded"
    assert plant.resolve("recipes") == CONFIG / "plant" / "recipes"


def test_resolve_leaves_an_absolute_path_unchanged() -> None:
    plant = load_config(CONFIG / "plant")

    assert plant.resolve(plant.cell.store.path) == Path("/var/lib/cellctl/cellctl.db")


def test_with_cell_swaps_the_cell_and_keeps_the_recipes() -> None:
    loaded = load_config(CONFIG)
    moved = {
        name: device.model_copy(update={"endpoint": device.endpoint.replace("15020", "40123")})
        for name, device in loaded.cell.devices.items()
    }

    swapped = loaded.with_cell(loaded.cell.model_copy(update={"devices": moved}))

    assert isinstance(swapped, LoadedConfig)
    assert swapped.cell.devices["fixture"].host_port == ("127.0.0.1", 40123)
    assert loaded.cell.devices["fixture"].host_port == ("127.0.0.1", 15020)
    assert swapped.recipes is loaded.recipes
    assert (swapped.cell_file, swapped.recipe_files) == (loaded.cell_file, loaded.recipe_files)


def test_with_cell_refuses_a_cell_the_recipes_do_not_fit() -> None:
    loaded = load_config(CONFIG)
    no_gauge = {name: device for name, device in loaded.cell.devices.items() if name != "gauge"}

    with pytest.raises(ConfigError) as caught:
        loaded.with_cell(loaded.cell.model_copy(update={"devices": no_gauge}))

    oslo_issues = [i for i in caught.value.issues if Path(i.file).name == "oslo.yaml"]
    assert {(i.line, i.path) for i in oslo_issues} == {
        (17, "quality.seat_width.source"),
        (18, "quality.seat_depth.source"),
        (19, "quality.staple_height.source"),
    }
    assert all("unknown device 'gauge'" in i.message for i in oslo_issues)
