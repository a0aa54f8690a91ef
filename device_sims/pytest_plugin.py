"""Pytest fixtures for a simulated cell on free loopback ports (registered as the ``device_sims`` plugin).

Override ``sim_time_scale``, ``sim_seed``, ``sim_config_dir`` or ``sim_sims_file`` in a test module or
conftest to change what ``sim_cell`` starts. The simulators are imported only when ``sim_cell`` is used, so
this plugin costs nothing to test runs that do not need them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from device_sims.harness import SimCell

DEFAULT_TIME_SCALE = 0.02
"""A whole changeover of the example cell takes well under a second at this scale."""


@pytest.fixture
def sim_time_scale() -> float:
    """Factor applied to every simulator duration."""
    return DEFAULT_TIME_SCALE


@pytest.fixture
def sim_seed() -> int:
    """Seed of the simulators' randomness (gauge noise and rejects)."""
    return 0


@pytest.fixture
def sim_config_dir(request: pytest.FixtureRequest) -> Path:
    """Directory holding the cell.yaml (and sims.yaml) to simulate: the repository's config/."""
    return Path(request.config.rootpath) / "config"


@pytest.fixture
def sim_sims_file(sim_config_dir: Path) -> Path | None:
    """The simulator behaviour file; None means ``<sim_config_dir>/sims.yaml``."""
    return None


@pytest_asyncio.fixture
async def sim_cell(
    sim_config_dir: Path, sim_sims_file: Path | None, sim_time_scale: float, sim_seed: int
) -> AsyncIterator[SimCell]:
    """A started SimCell on free 127.0.0.1 ports; ``sim_cell.cell_config()`` points at it."""
    from device_sims.harness import SimCell

    cell = SimCell.from_config_dir(
        sim_config_dir,
        sims_file=sim_sims_file,
        time_scale=sim_time_scale,
        seed=sim_seed,
        ephemeral_ports=True,
    )
    async with cell:
        yield cell
