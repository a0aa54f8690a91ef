"""The operator terminal UI (``cellctl tui``): a Textual client of the control socket."""
