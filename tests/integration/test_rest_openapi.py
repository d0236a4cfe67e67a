"""The REST API against its OpenAPI document (schemathesis), on a real node with an API key:
requests generated from the document, valid and invalid, get no 5xx, and every answer (status,
content type, body) is one the document declares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import API_KEY, NodeProcess

pytestmark = pytest.mark.integration

OPENAPI = Path(__file__).resolve().parents[2] / "node" / "server" / "openapi.json"
schema = schemathesis.openapi.from_path(OPENAPI)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=30,  # per operation: the whole run stays well under a minute
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_conforms_to_the_openapi_document(
    case: schemathesis.Case[Any], keyed_node: NodeProcess
) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    case.call_and_validate(base_url=keyed_node.url, headers=headers, checks=CHECKS, timeout=10)
