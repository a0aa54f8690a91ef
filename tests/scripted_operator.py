"""A scripted operator for engine tests on the example cell: answers operator steps as the demo does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from cellctl.demo import ScriptedOperator
from cellctl.engine import Engine
from cellctl.schema.load import LoadedConfig

TEST_OPERATOR = "test-operator"


@contextlib.asynccontextmanager
async def scripted_operator(engine: Engine, config: LoadedConfig) -> AsyncIterator[ScriptedOperator]:
    """While the block runs, every operator step is confirmed with its recipe's evidence."""
    operator = ScriptedOperator(engine, config.recipes, by=TEST_OPERATOR)
    unsubscribe = engine.add_listener(operator)
    task = asyncio.get_running_loop().create_task(operator.serve(), name="test:operator")
    try:
        yield operator
    finally:
        unsubscribe()
        task.cancel()
        await asyncio.wait([task])
