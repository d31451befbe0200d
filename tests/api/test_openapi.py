"""The OpenAPI document describes exactly the app's nine operations."""

from __future__ import annotations

import httpx2
import pytest

from container_mcp.api.app import ROUTES
from container_mcp.api.openapi import openapi_document

from .live import LiveApi

pytestmark = pytest.mark.anyio

OPERATION_IDS = {
    "ListContainers",
    "CreateContainer",
    "RetrieveContainer",
    "DeleteContainer",
    "CreateContainerFile",
    "ListContainerFiles",
    "RetrieveContainerFile",
    "DeleteContainerFile",
    "RetrieveContainerFileContent",
}


def test_document_has_the_nine_operations_of_the_route_table() -> None:
    doc = openapi_document()
    described = {
        (method.upper(), path, op["operationId"]) for path, item in doc["paths"].items() for method, op in item.items()
    }
    assert described == {(method, path, op_id) for method, path, _, op_id in ROUTES}
    assert {op_id for _, _, op_id in described} == OPERATION_IDS


def test_every_reference_resolves() -> None:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]

    def refs(node: object) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"]} if "$ref" in node else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


async def test_served_at_openapi_json(api: LiveApi) -> None:
    async with httpx2.AsyncClient(base_url=api.origin) as http:
        r = await http.get("/openapi.json")
    assert r.status_code == 200
    assert r.json() == openapi_document()
