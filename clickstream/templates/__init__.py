"""API Gateway mapping templates, rendered from the contract.

The ``*.vtl`` files beside this module hold the logic; :func:`preamble` writes the ``#set`` lines
that give them the contract's values (routes, limits, write keys, error codes). The CDK ingest
stack deploys exactly what these functions return, and the tests render the same text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources

from clickstream import contract

REQUEST = "request.vtl"
RESPONSE_SUCCESS = "response-success.vtl"
RESPONSE_ERROR = "response-error.vtl"
SETTINGS_REQUEST = "settings-request.vtl"


def _vtl(value: object) -> str:
    """A VTL literal for a str/int/bool/list/dict built only from contract-controlled values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if any(c in value for c in '"$#\\\n'):
            raise ValueError(f"value {value!r} cannot be embedded in a mapping template")
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_vtl(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_vtl(str(k))}: {_vtl(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot embed {type(value).__name__} in a mapping template")


def settings(stream_name: str | None = None, write_keys: Mapping[str, str] | None = None) -> dict:
    """The values every template sees, by VTL variable name."""
    values: dict[str, object] = {
        "envelopeVersion": contract.ENVELOPE_VERSION,
        "routeParam": contract.ROUTE_PARAM,
        "routeTypes": contract.SINGLE_ROUTES,
        "batchRoutes": list(contract.BATCH_ROUTES),
        "maxRequestBytes": contract.MAX_REQUEST_BYTES,
        "maxMessageBytes": contract.MAX_MESSAGE_BYTES,
        "maxBatchItems": contract.MAX_BATCH_ITEMS,
        "maxRecordBytes": contract.KINESIS_MAX_RECORD_BYTES,
        "maxPutBytes": contract.KINESIS_MAX_BYTES_PER_PUT,
        "maxUserAgentChars": contract.MAX_USER_AGENT_CHARS,
        "rejectPrefix": contract.REJECT_STREAM_PREFIX,
        "rejections": list(contract.TEMPLATE_REJECTIONS),
        "throttlingErrors": list(contract.KINESIS_THROTTLING_ERRORS),
        "retryAfterSeconds": str(contract.RETRY_AFTER_SECONDS),
        "errors": {e.code: {"status": e.status, "message": e.message} for e in contract.ERRORS.values()},
    }
    if stream_name is not None:
        values["streamName"] = stream_name
    if write_keys is not None:
        values["writeKeys"] = dict(write_keys)
    return values


def preamble(values: Mapping[str, object]) -> str:
    return "".join(f"#set(${name} = {_vtl(value)})\n" for name, value in values.items())


def source(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def request_template(stream_name: str, write_keys: Mapping[str, str]) -> str:
    """The request template of the one POST method on ``contract.TRACKING_RESOURCE`` (both media types).

    The write keys appear once per media type in the whole stack, however many routes there are.
    """
    contract.parse_write_keys(write_keys)  # refuse keys the contract does not allow
    return preamble(settings(stream_name, write_keys)) + source(REQUEST)


def response_template(name: str) -> str:
    return preamble(settings()) + source(name)


def error_response_json(code: str) -> str:
    """A static Segment-style error body (for gateway responses and mock integrations)."""
    return json.dumps(contract.error_body(code), separators=(",", ":"))


def settings_request_template(write_keys: Mapping[str, str]) -> str:
    contract.parse_write_keys(write_keys)
    values = {"settingsParam": contract.SETTINGS_PARAM, "writeKeys": dict(write_keys)}
    return preamble(values) + source(SETTINGS_REQUEST)


def settings_response_template() -> str:
    """analytics-next settings (contract.settings_body) with the key and host filled in by VTL.

    The API's own domain and stage make ``apiHost``; only known keys reach this template.
    """
    body = json.dumps(contract.settings_body("@KEY@", "@HOST@"), separators=(",", ":"))
    host = f"$context.domainName/$context.stage{contract.API_PREFIX}"
    body = body.replace("@KEY@", "$key").replace("@HOST@", host)
    return (f'#set($key = $util.escapeJavaScript($input.params(\'{contract.SETTINGS_PARAM}\'))'
            '.replaceAll("\\\\\'", "\'"))\n' + body + "\n")
