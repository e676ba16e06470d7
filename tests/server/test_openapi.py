"""The OpenAPI document declares what a client generator or a fuzzer needs (issue 16 item 6):
the bearer scheme, the error answers with the server's error body, and the bounds of paging and
id parameters. Read from a real server."""

from __future__ import annotations

import httpx
from phpo.schemas.api import MAX_INT64, MAX_PAGE


def test_spec_declares_bearer_scheme_error_bodies_and_parameter_bounds(live_server):
    spec = httpx.get(live_server.url + "/api/v1/openapi.json", timeout=30).json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    error = spec["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"code", "message"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # never sent by this server
    ops = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    for path, method, op in ops:
        if path.endswith("/health"):
            assert "security" not in op and not set(op["responses"]) & {"401", "403"}
            continue
        assert op["security"] == [{"bearer": []}], (method, path)
        expected = (
            {"401", "403"}
            | ({"404"} if "{" in path else set())
            | ({"413"} if method in ("post", "put") else set())
        )
        assert expected <= set(op["responses"]), (method, path, sorted(op["responses"]))
        for code in expected | ({"422"} if op.get("parameters") or op.get("requestBody") else set()):
            body = op["responses"][code]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
        for p in op.get("parameters", []):
            if p["name"] in ("limit",):
                assert (p["schema"]["minimum"], p["schema"]["maximum"]) == (1, MAX_PAGE), (path, p)
            if p["name"] == "offset" or p["name"].endswith("_id") and p["in"] == "path":
                assert p["schema"]["maximum"] == MAX_INT64, (path, p)
    # bodies validated off the event loop are still declared
    create = spec["paths"]["/api/v1/tasks"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskSpec"
    }
    assert "WorkflowSubmit" in spec["components"]["schemas"] and "TaskSpec" in spec["components"]["schemas"]
