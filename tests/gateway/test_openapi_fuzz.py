"""schemathesis against /openapi.json: generated requests never get an undocumented status,
a 5xx, or a body that contradicts the schema. The model server is FakePredictor (named so)."""

from __future__ import annotations

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

from gateway.app import create_app
from gateway.settings import Settings
from tests.gateway.conftest import FakePredictor

pytestmark = pytest.mark.slow

app = create_app(Settings(max_batch=4), FakePredictor())
schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_openapi_document(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
