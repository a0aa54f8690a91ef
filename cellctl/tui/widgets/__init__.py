"""Widgets the TUI's panes share: modals and the control chart."""
