"""The service's OpenAPI document, built from the request and response models themselves.

BentoML generates an OpenAPI 3.0 document too, but it flattens optional fields (an ``int | None``
becomes ``integer``, so a ``null`` the service really sends breaks its own contract) and lists only
400/404/500 as errors. This one is OpenAPI 3.1, whose schemas are the JSON Schema that pydantic
writes for the models the service validates with, and it names every status a client can get.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

from pydantic.json_schema import models_json_schema

from patron.serving.schemas import ENDPOINTS, ErrorResponse

REF = "#/components/schemas/{model}"
ERRORS = {
    "400": "malformed JSON, or nested too deeply",
    "401": "no API key, or an unknown one",
    "403": "an API key of another scope",
    "413": "request body over the size limit",
    "415": "the body is not JSON",
    "422": "the body breaks the request schema; `detail` names each field",
    "503": "models not loaded yet, or the online feature store unreachable (retry later)",
}


@cache
def document() -> dict:
    models = {m for e in ENDPOINTS.values() for m in (e.request, e.response)} | {ErrorResponse}
    keys, defs = models_json_schema([(m, "validation" if m in {e.request for e in ENDPOINTS.values()} else "serialization")
                                     for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF)
    schema = {k[0]: v for k, v in keys.items()}
    error = {"description": "", "content": {"application/json": {"schema": schema[ErrorResponse]}}}
    paths: dict[str, dict] = {}
    for path, e in ENDPOINTS.items():
        responses = {"200": {"description": "OK", "content": {"application/json": {"schema": schema[e.response]}}}}
        responses |= {code: {**error, "description": text} for code, text in ERRORS.items()}
        paths[path] = {
            "post": {
                "operationId": path.strip("/").replace("/", "_"),
                "summary": e.summary,
                "tags": [e.scope],
                "security": [{"ApiKey": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema[e.request]}}},
                "responses": responses,
            }
        }
    for path, text in (("/livez", "the process is up"), ("/readyz", "models and features loaded, store reachable"),
                       ("/metrics", "Prometheus metrics")):
        paths[path] = {"get": {"operationId": path.strip("/"), "summary": text, "tags": ["probes"], "security": [],
                               "responses": {"200": {"description": "OK"}, "503": {"description": "not (yet) ready"}}}}
    try:
        v = version("patron")
    except PackageNotFoundError:
        v = "0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Patron",
            "version": v,
            "description": "Recommendations for the storefront; churn, LTV and customer profiles for the CRM. "
                           "Every call is a JSON POST with an X-API-Key header of the endpoint's scope (the tag).",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }
