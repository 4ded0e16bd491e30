"""The ingest API's OpenAPI document: valid OpenAPI 3.1, and every example true.

A real validator checks the document; each example is checked against its own schema, and
each example event against the event contract itself, so the document cannot promise what
the server refuses.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from contract.events import REJECT_REASONS, Event, build_event
from retention.ingest import loads_document
from retention.ingest_rules import ENDPOINTS, STATUSES, verdicts

DOC = loads_document()
REGISTRY = Registry().with_resource(
    "urn:openapi", Resource.from_contents(DOC, default_specification=DRAFT202012)
)


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate(DOC, cls=OpenAPIV31SpecValidator)


def test_the_validator_would_catch_a_broken_document() -> None:
    broken = copy.deepcopy(DOC)
    broken["components"]["securitySchemes"]["bearer"]["type"] = "token"
    with pytest.raises(OpenAPIValidationError):
        validate(broken, cls=OpenAPIV31SpecValidator)


def examples() -> Iterator[tuple[str, str, Any]]:
    """(where, JSON pointer of the schema, example) for every example in the document."""
    for path, operations in DOC["paths"].items():
        for method, operation in operations.items():
            base = f"/paths/{path.replace('/', '~1')}/{method}"
            parts = [("requestBody", operation.get("requestBody"))]
            parts += [(f"responses/{s}", r) for s, r in operation["responses"].items()]
            for where, part in parts:
                for media, content in (part or {}).get("content", {}).items():
                    pointer = f"{base}/{where}/content/{media.replace('/', '~1')}/schema"
                    if "example" in content:
                        yield f"{method} {path} {where}", pointer, content["example"]
                    for name, example in content.get("examples", {}).items():
                        yield f"{method} {path} {where} {name}", pointer, example["value"]


EXAMPLES = list(examples())


def test_every_endpoint_has_examples() -> None:
    for endpoint in ENDPOINTS:
        found = [w for w, _, _ in EXAMPLES if w.startswith(f"post /v1/{endpoint} ")]
        assert any("requestBody" in w for w in found), endpoint
        assert {w.split()[2] for w in found} >= {f"responses/{s}" for s in STATUSES if s != 500}


@pytest.mark.parametrize(("where", "pointer", "example"), EXAMPLES, ids=[w for w, _, _ in EXAMPLES])
def test_each_example_validates_against_its_schema(where: str, pointer: str, example: Any) -> None:
    Draft202012Validator({"$ref": f"urn:openapi#{pointer}"}, registry=REGISTRY).validate(example)


def test_the_documented_reasons_are_the_contract_s() -> None:
    result = DOC["components"]["schemas"]["Result"]["properties"]["reason"]["enum"]
    assert result == list(REJECT_REASONS)


def validate_event(item: Any) -> Event:
    return build_event(dict(item), latest_ms=int(time.time() * 1000) + 86_400_000)


def test_the_example_requests_get_the_documented_verdicts() -> None:
    """What the server would answer to each request example, as the document shows it."""
    post = DOC["paths"]
    for name, example in post["/v1/events"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ].items():
        assert verdicts([example["value"]], validate_event, 100).status() == 202, name
    batch = post["/v1/batch"]["post"]
    request = batch["requestBody"]["content"]["application/json"]["examples"]
    assert verdicts(request["mixed"]["value"]["events"], validate_event, 100).status() == 202
    partly = verdicts(request["partly_bad"]["value"]["events"], validate_event, 100).body()
    documented = batch["responses"]["202"]["content"]["application/json"]["example"]
    assert [(r["status"], r.get("reason")) for r in partly["results"]] == [
        (r["status"], r.get("reason")) for r in documented["results"]
    ]
