"""Pure domain of cellctl: no I/O, no third-party protocol libraries."""
