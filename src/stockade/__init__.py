"""stockade: a self-hosted security gateway for AI agents and signed plugins."""

__version__ = "0.1.0"
