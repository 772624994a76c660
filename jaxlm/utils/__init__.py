"""Shared utilities: config registries and overrides, benchmark and report writers."""
