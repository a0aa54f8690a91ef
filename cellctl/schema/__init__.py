"""Pydantic models for every file a person writes, and the loader that reports errors by file and line."""
