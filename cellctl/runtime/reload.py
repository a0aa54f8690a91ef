"""What a configuration reload may apply live: the recipes; every other difference needs a restart."""

from __future__ import annotations

from dataclasses import dataclass

from cellctl.schema.load import LoadedConfig

LIVE_CELL_FIELDS = frozenset({"recipes_dir"})
"""Cell-file fields a reload applies: where the recipes come from (the recipes themselves are swapped)."""


@dataclass(frozen=True)
class ConfigDiff:
    """The difference between the running configuration and a newly loaded one."""

    added: tuple[str, ...]
    """Variants only the new configuration has."""
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    """Variants in both whose recipe differs."""
    needs_restart: tuple[str, ...]
    """Top-level cell-file fields that differ and are not applied until the next start."""

    @property
    def recipes_changed(self) -> bool:
        """True when the reload swaps the recipes."""
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        """One line for the log and the STATUS line."""
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (("added", self.added), ("removed", self.removed), ("changed", self.changed))
            if names
        ]
        return "recipes " + ("; ".join(parts) if parts else "unchanged")


def config_diff(running: LoadedConfig, new: LoadedConfig) -> ConfigDiff:
    """Compare two validated configurations: recipes by variant, the cell file by top-level field."""
    old_cell = running.cell.model_dump(mode="json")
    new_cell = new.cell.model_dump(mode="json")
    restart = tuple(
        sorted(
            key
            for key in old_cell.keys() | new_cell.keys()
            if key not in LIVE_CELL_FIELDS and old_cell.get(key) != new_cell.get(key)
        )
    )
    both = running.recipes.keys() & new.recipes.keys()
    return ConfigDiff(
        added=tuple(sorted(new.recipes.keys() - running.recipes.keys())),
        removed=tuple(sorted(running.recipes.keys() - new.recipes.keys())),
        changed=tuple(sorted(v for v in both if running.recipes[v] != new.recipes[v])),
        needs_restart=restart,
    )
