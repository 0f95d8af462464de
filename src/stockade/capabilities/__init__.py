"""Capabilities: declared as data (definitions/*.yaml), implemented by plain functions.

`registry.load_registry()` pairs the two and refuses a definition without an implementation or an
implementation without a definition.
"""
