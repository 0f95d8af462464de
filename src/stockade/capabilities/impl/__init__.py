"""Implementations of the built-in capabilities, one module per category."""
