"""schemathesis against /openapi.json: generated requests never get an undocumented status,
a 5xx, or a body that contradicts the schema; requests the document allows are accepted and
requests it forbids are refused (positive_data_acceptance, negative_data_rejection), so the
document says every rule the server enforces. The model server is FakePredictor (named so).

What it leaves out and why: docs/gateway.md, "The OpenAPI document".
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, reject, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.settings import Settings
from gateway.v2.codec import HEADER_LENGTH
from modelrepo.api import SELECTOR_FIELDS
from tests.gateway.conftest import FakePredictor

pytestmark = pytest.mark.slow

# A request the document allows may still be refused for what no schema can say about bytes:
# too large (413), not an image (415), an image that does not decode (422). 400 is not here:
# every 400 rule is in the document.
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all"},
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "404", "413", "415", "422", "429", "503"]
            }
        },
    }
)
app = create_app(Settings(max_batch=4), FakePredictor())
schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=CONFIG)
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    positive_data_acceptance,
    negative_data_rejection,
)
# A /v2 tensor's shape, datatype and data must agree (so many elements of so many bytes): no
# schema can say so, so there "the document allows it" does not mean "the server takes it".
TENSOR_CHECKS = tuple(check for check in CHECKS if check is not positive_data_acceptance)
_PINS = {"version", "label"}


def unstatable_rule(case: Any) -> bool:
    """The rules OpenAPI 3.0 cannot state, which the document says in prose: between the query
    string and the body (an option in both must agree; version in one and label in the other
    is refused), and /v2's binary-extension header, which must be the JSON part's length."""
    if HEADER_LENGTH in (case.headers or {}):
        return True
    query = dict(case.query or {})
    query.update(query.pop("options", None) or {})
    body = case.body if isinstance(case.body, dict) else {}
    in_query = {name for name in SELECTOR_FIELDS if name in query}
    in_body = {name for name in SELECTOR_FIELDS if name in body}
    return bool(in_query & in_body) or bool(_PINS & in_query and _PINS & in_body)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_openapi_document(case: Any) -> None:
    if unstatable_rule(case):
        reject()
    tensors = case.operation.path.endswith("/infer")
    case.call_and_validate(checks=TENSOR_CHECKS if tensors else CHECKS)
