"""Schemathesis against the API's own OpenAPI schema, every check enabled, a bounded number of
examples per operation, in-process (the ASGI app, no network)."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import CHECKS, load_all_checks  # noqa: E402

from oncolens.apps.api import ApiSettings, create_app  # noqa: E402
from oncolens.predictor import Predictor  # noqa: E402


TOKEN = "t0k3n-for-tests"


@pytest.fixture(scope="module", params=[None, TOKEN], ids=["open", "token"])
def api_schema(request, tiny_bundle):
    settings_ = ApiSettings(max_upload_bytes=200_000, token=request.param)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(Predictor.from_bundle(tiny_bundle), settings_))


def test_api_conforms_to_its_schema_under_generated_requests(api_schema, request):
    headers = {"Authorization": f"Bearer {TOKEN}"} if "token" in request.node.callspec.id else None
    load_all_checks()
    # every check but positive_data_acceptance: a schema cannot say that the uploaded bytes must decode as
    # an image, so schema-valid random bytes get the documented 415 (see test_api_security for the schema)
    checks = [check for check in CHECKS.get_all()
              if callable(check) and getattr(check, "__name__", "") != "positive_data_acceptance"]
    names = [getattr(check, "__name__", "") for check in checks]
    assert "not_a_server_error" in names and "response_schema_conformance" in names
    failures: list[str] = []
    calls: dict[str, int] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /health", "GET /model", "POST /predict", "POST /explain"}
    for operation in operations:
        label = operation.label

        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            calls[case.method + " " + case.path] = calls.get(case.method + " " + case.path, 0) + 1
            case.call_and_validate(checks=checks, headers=headers)

        try:
            run()
        except Exception as exc:  # recorded, so that every operation is exercised before the test fails
            failures.append(f"{label}: {type(exc).__name__}: {str(exc).strip()[:300]}")
    assert not failures, sorted(set(failures))[:8]
    assert all(calls.get(op.label, 0) >= (1 if op.label.startswith("GET") else 10) for op in operations), calls
