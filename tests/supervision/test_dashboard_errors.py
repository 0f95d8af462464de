"""The dashboard's one error mapping (issue 15): a page and /api answer the same StockadeError
with the same status, `ErrorType.http_status` from core.errors; /api's body is the error's dict."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.requests import Request

from stockade.core.errors import ErrorType, err
from stockade.supervision.dashboard.app import ROUTES, DashboardApp, error_response


def _request(path: str) -> Request:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                             "query_string": b"", "headers": [(b"host", b"127.0.0.1:7800")], "scheme": "https",
                             "server": ("127.0.0.1", 7800)}
    return Request(scope)


@pytest.mark.parametrize("etype", list(ErrorType))
def test_pages_and_api_answer_every_error_type_with_its_one_status(etype: ErrorType) -> None:
    e = err(str(etype), "something <b>went</b> wrong")
    api = error_response(_request("/api/approvals"), e)
    page = error_response(_request("/approvals"), e, "csrf")
    assert api.status_code == page.status_code == etype.http_status
    assert json.loads(bytes(api.body)) == {"error": e.to_dict()}
    text = bytes(page.body).decode()
    assert str(etype) in text and "&lt;b&gt;went&lt;/b&gt;" in text


def test_internal_is_500_on_a_page_too() -> None:
    assert error_response(_request("/"), err("Internal", "approvals are not running")).status_code == 500


def test_an_unknown_error_type_is_a_400() -> None:
    assert error_response(_request("/api/x"), err("PackSpecificError", "m")).status_code == 400


def test_every_route_has_a_handler_method() -> None:
    kinds = {"open", "page", "action", "api", "api_write"}
    for method, path, kind, name in ROUTES:
        assert kind in kinds and callable(getattr(DashboardApp, name, None)), (method, path, name)
        # /metrics is where Prometheus scrapers look; it is the one API route outside /api/
        assert (path.startswith("/api/") or path == "/metrics") == kind.startswith("api"), path
    assert len({(m, p) for m, p, _, _ in ROUTES}) == len(ROUTES)
