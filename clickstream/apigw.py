"""An API Gateway (REST API) mapping-template emulation on airspeed-ext, for tests and parity checks.

It provides ``$input``, ``$util``, ``$context`` and ``$stageVariables`` as API Gateway documents them
(https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-mapping-template-reference.html)
and Java String semantics for the few methods our templates call. Where API Gateway's behaviour is
not documented (``$input.json`` of a path that matches nothing), it raises instead of guessing, so
a template that relies on it fails its tests.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import airspeed
import airspeed.operators
from jsonpath_ng import parse as jsonpath_parse

from clickstream import contract

_STRING_METHODS = airspeed.operators.__additional_methods__[str]
# Java's String methods where Python's differ (indexOf returns -1; trim; case; equality).
_STRING_METHODS.update(
    {
        "indexOf": lambda self, s, start=0: self.find(s, start),
        "trim": lambda self: self.strip(" \t\n\r\x0b\x0c\x00"),
        "toLowerCase": lambda self: self.lower(),
        "toUpperCase": lambda self: self.upper(),
        "endsWith": lambda self, s: self.endswith(s),
        "isEmpty": lambda self: len(self) == 0,
        "equals": lambda self, other: self == other,
        "length": lambda self: len(self.encode("utf-16-le", "surrogatepass")) // 2,
        "substring": lambda self, start, end=None: _substring(self, start, end),
    }
)


def _substring(text: str, start: int, end: int | None = None) -> str:
    """Java's ``String.substring``: indexes are UTF-16 units (a cut may split a surrogate pair)."""
    if text.isascii():
        return text[start:end]
    units = text.encode("utf-16-le", "surrogatepass")
    return units[2 * start: None if end is None else 2 * end].decode("utf-16-le", "surrogatepass")


class UndocumentedBehaviour(LookupError):
    """The template asked for something whose result on API Gateway is not documented."""


def escape_javascript(text: str) -> str:
    """``$util.escapeJavaScript``: Apache commons-lang 2 ``StringEscapeUtils.escapeJavaScript``.

    It works on UTF-16 code units, so characters outside the BMP become two ``\\uXXXX`` escapes.
    """
    out: list[str] = []
    units = text.encode("utf-16-be", "surrogatepass")
    for i in range(0, len(units), 2):
        ch = (units[i] << 8) | units[i + 1]
        c = chr(ch) if ch < 0xD800 or ch > 0xDFFF else None
        if ch > 0x7F:
            out.append(f"\\u{ch:04X}")
        elif ch < 32:
            out.append({8: "\\b", 10: "\\n", 9: "\\t", 12: "\\f", 13: "\\r"}.get(ch, f"\\u{ch:04X}"))
        elif c in ("'", '"', "\\", "/"):
            out.append("\\" + c)
        else:
            out.append(c or "")
    return "".join(out)


class Util:
    """``$util``."""

    def escapeJavaScript(self, s: Any) -> str:
        return escape_javascript("" if s is None else str(s))

    def base64Encode(self, s: Any) -> str:
        return base64.b64encode(str(s).encode("utf-8")).decode("ascii")

    def base64Decode(self, s: Any) -> str:
        try:
            return base64.b64decode(str(s), validate=False).decode("utf-8", "replace")
        except ValueError:
            return ""

    def parseJson(self, s: Any) -> Any:
        return json.loads(str(s))

    def urlEncode(self, s: Any) -> str:
        return urllib.parse.quote_plus(str(s))

    def urlDecode(self, s: Any) -> str:
        return urllib.parse.unquote_plus(str(s))


@lru_cache(maxsize=256)
def _compile(path: str):
    return jsonpath_parse(path)


class Input:
    """``$input`` for one payload (request or integration response) and the request's parameters."""

    def __init__(self, body: str, params: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.body = body
        self._params = params or {"path": {}, "querystring": {}, "header": {}}
        self._parsed: Any = None
        self._parsed_ok = False

    def _root(self) -> Any:
        if not self._parsed_ok:
            self._parsed = json.loads(self.body) if self.body.strip() else {}
            self._parsed_ok = True
        return self._parsed

    def _find(self, path: str) -> list[Any]:
        return [m.value for m in _compile(path).find(self._root())]

    def path(self, path: str) -> Any:
        found = self._find(path)
        return found[0] if found else None

    def json(self, path: str) -> str:
        found = self._find(path)
        if not found:
            raise UndocumentedBehaviour(f"$input.json('{path}') matched nothing")
        return json.dumps(found[0], ensure_ascii=False, separators=(",", ":"))

    def params(self, name: str | None = None) -> Any:
        if name is None:
            return self._params
        for where in ("path", "querystring"):
            if name in self._params.get(where, {}):
                return self._params[where][name]
        for header, value in self._params.get("header", {}).items():
            if header.lower() == name.lower():
                return value
        return None


@dataclass
class GatewayRequest:
    """What API Gateway knows about a request when it renders the request template."""

    resource_path: str
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    http_method: str = "POST"
    source_ip: str = "127.0.0.1"
    request_id: str = "00000000-0000-4000-8000-000000000000"
    request_time_epoch: int = 0
    stage: str = "v1"
    domain_name: str = "example.execute-api.us-east-1.amazonaws.com"
    query: dict[str, str] = field(default_factory=dict)
    stage_variables: dict[str, str] = field(default_factory=dict)
    path_params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def tracking(cls, route: str, body: str, **kwargs: Any) -> GatewayRequest:
        """A POST to ``/v1/<route>`` as the one ``/v1/{route}`` method of the deployed API sees it."""
        return cls(resource_path=contract.TRACKING_RESOURCE, body=body,
                   path_params={contract.ROUTE_PARAM: route}, **kwargs)

    def context(self) -> dict[str, Any]:
        user_agent = next((v for k, v in self.headers.items() if k.lower() == "user-agent"), None)
        return {
            "requestId": self.request_id,
            "extendedRequestId": self.request_id,
            "requestTimeEpoch": self.request_time_epoch,
            "resourcePath": self.resource_path,
            "path": f"/{self.stage}{self._actual_path()}",
            "httpMethod": self.http_method,
            "stage": self.stage,
            "domainName": self.domain_name,
            "identity": {"sourceIp": self.source_ip, "userAgent": user_agent},
            "requestOverride": {"header": {}, "path": {}, "querystring": {}},
            "responseOverride": {"header": {}},
        }

    def _actual_path(self) -> str:
        path = self.resource_path
        for name, value in self.path_params.items():
            path = path.replace("{" + name + "}", value)
        return path

    def params(self) -> dict[str, dict[str, str]]:
        return {"path": dict(self.path_params), "querystring": dict(self.query), "header": dict(self.headers)}


@lru_cache(maxsize=32)
def _template(text: str) -> airspeed.Template:
    return airspeed.Template(text)


def render(template: str, payload: str, request: GatewayRequest) -> tuple[str, dict[str, Any]]:
    """Render ``template`` for ``payload``; returns the output and the ``$context`` it left behind."""
    context = request.context()
    namespace = {
        "input": Input(payload, request.params()),
        "util": Util(),
        "context": context,
        "stageVariables": dict(request.stage_variables),
    }
    return _template(template).merge(namespace), context


@dataclass
class GatewayResponse:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def integration_response(
    templates: Mapping[str, str], status: int, payload: str, request: GatewayRequest
) -> GatewayResponse:
    """Pick the integration response whose selection pattern matches ``status`` and render it.

    ``templates`` maps a selection pattern (a regex over the integration's status code, ``""`` for
    the default response) to its template, as API Gateway does for AWS integrations.
    """
    chosen = templates[""]
    method_status = 200
    for pattern, template in templates.items():
        if pattern and re.fullmatch(pattern, str(status)):
            chosen = template
            method_status = status
            break
    body, context = render(chosen, payload, request)
    override = context["responseOverride"]
    final = int(override.get("status") or method_status)
    return GatewayResponse(final, {k: str(v) for k, v in override["header"].items()}, body.strip())
