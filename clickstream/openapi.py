"""The tracking API as an OpenAPI 3.0 document, generated from the contract.

Served by ``clickstream local`` at ``/openapi.json``, written to ``docs/openapi.json`` by
``clickstream openapi`` (a test keeps the two equal), and used to fuzz the collector.
"""

from __future__ import annotations

from typing import Any

from clickstream import __version__, contract

ERROR = {"$ref": "#/components/schemas/Error"}
SUCCESS = {"$ref": "#/components/schemas/Success"}


def _responses(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "stored durably", "content": {"application/json": {
        "schema": SUCCESS}}}}
    for status in statuses:
        codes = sorted(e.code for e in contract.ERRORS.values() if e.status == status)
        out[str(status)] = {"description": ", ".join(codes),
                            "headers": ({"Retry-After": {"schema": {"type": "integer"}}}
                                        if status in (429, 500, 503) else {}),
                            "content": {"application/json": {"schema": ERROR}}}
    return out


def _body(schema_ref: str) -> dict[str, Any]:
    schema = {"$ref": schema_ref}
    return {"required": True, "content": {media: {"schema": schema} for media in contract.ACCEPTED_MEDIA_TYPES}}


def document(server_url: str = "http://127.0.0.1:8080") -> dict[str, Any]:
    # Only what the API enforces is a constraint here; field types and required fields are checked by
    # the warehouse model (rows that fail go to `rejected`), so they are documented, not imposed.
    fields = {
        "type": f"one of {', '.join(contract.MESSAGE_TYPES)} (the route implies it when absent)",
        "userId": "user id (this or anonymousId is required by the warehouse)",
        "anonymousId": "anonymous id", "event": "track: event name", "name": "page/screen name",
        "groupId": "group: group id", "previousId": "alias: previous id",
        "messageId": f"dedup key, at most {contract.MAX_MESSAGE_ID_CHARS} characters",
        "timestamp": "ISO 8601 client time", "sentAt": "ISO 8601 send time", "properties": "object",
        "traits": "object", "context": "object", "integrations": "object",
        "writeKey": "write key (analytics.js puts it in every body)",
    }
    message = {
        "type": "object",
        "description": f"A Segment message; at most {contract.MAX_MESSAGE_BYTES} bytes.",
        "properties": {name: {"description": text} for name, text in fields.items()},
        "additionalProperties": True,
    }
    batch = {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "minItems": 1, "maxItems": contract.MAX_BATCH_ITEMS,
                      "items": {"$ref": "#/components/schemas/Message"}},
            "writeKey": {"description": "write key, when not in Basic auth"},
            "sentAt": {"description": "merged into each message by the warehouse"},
            "context": {"description": "merged under each message's context by the warehouse"},
            "integrations": {"description": "merged under each message's integrations"},
        },
    }
    paths: dict[str, Any] = {}
    common = tuple(s for s in contract.error_statuses() if s not in (404, 405))
    for route, rtype in contract.SINGLE_ROUTES.items():
        paths[f"{contract.API_PREFIX}/{route}"] = {"post": {
            "operationId": f"post_{route}", "summary": f"one {rtype} message",
            "requestBody": _body("#/components/schemas/Message"), "responses": _responses(*common),
            "security": [{"basic": []}, {}]}}
    for route in contract.BATCH_ROUTES:
        paths[f"{contract.API_PREFIX}/{route}"] = {"post": {
            "operationId": f"post_{route}", "summary": "a batch of messages, one stream record each",
            "requestBody": _body("#/components/schemas/Batch"), "responses": _responses(*common),
            "security": [{"basic": []}, {}]}}
    paths[f"{contract.API_PREFIX}/{contract.METRICS_ROUTE}"] = {"post": {
        "operationId": "post_metrics", "summary": "analytics-next metrics: accepted, not stored",
        "requestBody": {"content": {m: {"schema": {"description": "anything: accepted and dropped"}}
                                    for m in contract.ACCEPTED_MEDIA_TYPES}},
        "responses": _responses(413, 415)}}
    paths[contract.SETTINGS_PATH] = {"get": {
        "operationId": "get_settings", "summary": "analytics-next settings for a write key",
        "parameters": [{"name": "writeKey", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "settings", "content": {"application/json": {"schema": {
            "type": "object", "required": ["integrations"]}}}}, **{k: v for k, v in _responses(401).items()
                                                                  if k != "200"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Clickstream tracking API (Segment HTTP Tracking API compatible)", "version": __version__,
                 "description": "Write keys: Basic auth (key as user, empty password) or the body's writeKey. "
                                f"Limits: {contract.MAX_MESSAGE_BYTES} bytes per message, "
                                f"{contract.MAX_REQUEST_BYTES} bytes per request, "
                                f"{contract.MAX_BATCH_ITEMS} messages per batch."},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "Message": message,
                "Batch": batch,
                "Success": {"type": "object", "required": ["success"], "properties": {
                    "success": {"type": "boolean", "enum": [True]}}},
                "Error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string", "enum": sorted(contract.ERRORS)}, "message": {"type": "string"}}},
            },
        },
    }
