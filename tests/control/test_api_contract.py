"""Contract tests driven by the OpenAPI document (schemathesis): whatever a client
sends that the document allows, and much that it does not, the API answers
without a server error, and a refusal is a 4xx naming the problem.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from portico.control.api import make_app
from portico.control.daemon import Daemon
from portico.control.store import open_store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"
TOKEN = "contract-token"
STATE = Path(tempfile.mkdtemp(prefix="portico-contract-")) / "state.db"
DAEMON = Daemon(open_store(f"sqlite:{STATE}"), initial=yaml.safe_load(EXAMPLE.read_text()),
                seed=1)
schema = schemathesis.openapi.from_asgi("/openapi.json", make_app(DAEMON, TOKEN))


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_request_makes_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code == 422:
        problems = response.json().get("problems") or [response.json()]
        assert problems  # a refusal says what is wrong
