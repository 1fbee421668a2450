"""JSON Schema checks for channel messages and aggregates (draft 2020-12), cached."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.validators import Draft202012Validator

from fleetcloud.core import jsonish
from fleetcloud.core.errors import BadRequest, ValidationFailed


def check_schema(schema: Any) -> None:
    """Reject a schema that is not itself valid JSON Schema."""
    if not isinstance(schema, dict):
        raise BadRequest("a JSON schema must be an object")
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise BadRequest(f"invalid JSON schema: {exc.message}") from exc


@lru_cache(maxsize=512)
def _validator(schema_text: str) -> Draft202012Validator:
    return Draft202012Validator(jsonish.loads(schema_text))


def validate(schema_text: str, value: Any, what: str) -> None:
    """Raise ``ValidationFailed`` naming the first problem if ``value`` breaks the schema."""
    error = jsonschema.exceptions.best_match(_validator(schema_text).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ValidationFailed(f"{what} does not match its schema at {where}: {error.message}")
