"""MCP transports (filled in below)."""
from typing import Any


def routes(pipeline: Any, max_body: int) -> list[Any]:
    return []


def lifespan(pipeline: Any) -> Any:
    return None
