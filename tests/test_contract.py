"""The contract's own rules, and that its prose twins in docs/ and the CLI say the same."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from clickstream import contract
from clickstream.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_write_key_specs():
    assert contract.parse_write_keys(["abcdefgh=web", "ijklmnop-qr=server-side"]) == {
        "abcdefgh": "web", "ijklmnop-qr": "server-side"}
    assert contract.parse_write_keys(["Key_12345678"]) == {"Key_12345678": "key_12345678"}
    assert contract.parse_write_keys(["aaaaaaaa=a,bbbbbbbb=b"]) == {"aaaaaaaa": "a", "bbbbbbbb": "b"}
    assert contract.parse_write_keys({"aaaaaaaa": "a"}) == {"aaaaaaaa": "a"}


def test_bad_write_keys_are_all_reported_at_once():
    with pytest.raises(contract.WriteKeyError) as info:
        contract.parse_write_keys(["short=web", 'good-key-1=Bad Source', "aaaaaaaa=x", "aaaaaaaa=y"])
    text = str(info.value)
    assert "write key 'short' must be 8-128 characters" in text
    assert "source name 'Bad Source'" in text
    assert "given twice" in text
    with pytest.raises(contract.WriteKeyError, match="at least one write key"):
        contract.parse_write_keys([])


@pytest.mark.parametrize("header,body,expected", [
    ("Basic " + base64.b64encode(b"k1234567:").decode(), None, "k1234567"),
    ("Basic " + base64.b64encode(b"k1234567").decode(), None, "k1234567"),
    ("Basic " + base64.b64encode(b"k1234567:pw").decode(), "other", "k1234567"),
    ("Bearer tok", "bodykey1", "bodykey1"),
    (None, "bodykey1", "bodykey1"),
    ("Basic " + base64.b64encode(b":").decode(), "bodykey1", "bodykey1"),
    (None, 12345678, None),
    (None, None, None),
])
def test_write_key_resolution_basic_first(header, body, expected):
    assert contract.resolve_write_key(header, body) == expected


def test_routes():
    assert contract.route_of("/v1/t") == "t" and contract.route_of("/v1/batch") == "batch"
    assert contract.route_of("/v1/nope") is None and contract.route_of("/v2/t") is None
    assert len(contract.tracking_paths()) == len(contract.SINGLE_ROUTES) + len(contract.BATCH_ROUTES) + 1
    assert set(contract.SINGLE_ROUTES.values()) == set(contract.MESSAGE_TYPES)


def test_error_messages_are_safe_to_embed_in_templates():
    for err in contract.ERRORS.values():
        assert not re.search(r'["\\$#]', err.message), err.code
    assert set(contract.TEMPLATE_REJECTIONS) <= set(contract.ERRORS)


def test_envelope_doc_lists_every_field_in_order():
    doc = (ROOT / "docs" / "envelope.md").read_text()
    documented = re.findall(r"^\| `(\w+)` \|", doc, re.M)
    assert documented == list(contract.ENVELOPE_FIELDS)


def test_every_subcommand_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"clickstream {name}" in readme, name


def test_every_configuration_key_is_in_the_readme_and_cdk_json():
    import json

    from clickstream.config import DEFAULTS

    readme = (ROOT / "README.md").read_text()
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    for key in DEFAULTS:
        assert f"`{key}`" in readme, key
        if key not in ("redshiftSecretArn", "redshiftDbUser"):
            assert key in context, key
