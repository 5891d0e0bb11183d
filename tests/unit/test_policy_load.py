"""Policy files: the seed loads as it is; every mistake is named with file, path and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz.policy.load import PolicyError, load_policy, parse_policy
from authz.policy.model import Action, Counting, Limit, Scope

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "policies" / "seed.json"


def problems(doc: object, source: str = "p.json") -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps(doc).encode(), source)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def test_the_seed_policy_loads_as_it_is() -> None:
    policy = load_policy(SEED)
    assert policy.default is Action.DENY
    entry = policy.tools.match("binance_us_create_listen_key")
    assert entry is not None
    (rule,) = entry.rules
    assert rule.action is Action.ALLOW
    assert rule.counts == (
        Counting(
            Limit("binance_us_create_listen_key_rate", 60, 30, Scope.GRANT),
            id="/tools/binance_us_create_listen_key/limits/binance_us_create_listen_key_rate",
        ),
    )
    assert policy.version.startswith("sha256:")


def test_yaml_loads_into_the_same_policy() -> None:
    yaml_text = b"""
version: "1"
default: deny
tools:
  binance_us_create_listen_key:
    limits:
      - {counter: binance_us_create_listen_key_rate, window: minute, max: 30, scope: grant}
"""
    from_yaml = parse_policy(yaml_text, "p.yaml")
    from_json = load_policy(SEED)
    assert (from_yaml.default, from_yaml.tools) == (from_json.default, from_json.tools)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"default": "deny"}, '$.version: missing: add "version": "1"'),
        ({"version": "2"}, "$.version: unsupported version '2'"),
        ({"version": "1", "defualt": "deny"}, "$.defualt: unknown key"),
        (
            {"version": "1", "default": "block"},
            '$.default: expected "allow" or "deny", got "block"',
        ),
        ({"version": "1", "tools": []}, "$.tools: expected an object, got a list"),
        ({"version": "1", "tools": {"t": {"action": "maybe"}}}, "$.tools.t.action: expected"),
        ({"version": "1", "tools": {"t": {"reson": "x"}}}, "$.tools.t.reson: unknown key"),
        (
            {"version": "1", "tools": {"t": {"reason": ""}}},
            "$.tools.t.reason: expected a non-empty",
        ),
        ({"version": "1", "tools": {"t": {"limits": {}}}}, "$.tools.t.limits: expected a list"),
        (
            {"version": "1", "tools": {"t": {"limits": [{"window": 60, "max": 1}]}}},
            "$.tools.t.limits[0].counter: missing",
        ),
        (
            {
                "version": "1",
                "tools": {"t": {"limits": [{"counter": "c", "window": "week", "max": 1}]}},
            },
            "$.tools.t.limits[0].window: expected",
        ),
        (
            {"version": "1", "tools": {"t": {"limits": [{"counter": "c", "window": 0, "max": 1}]}}},
            "$.tools.t.limits[0].window: expected",
        ),
        (
            {
                "version": "1",
                "tools": {"t": {"limits": [{"counter": "c", "window": 1, "max": True}]}},
            },
            "$.tools.t.limits[0].max: expected a whole number",
        ),
        (
            {
                "version": "1",
                "tools": {"t": {"limits": [{"counter": "c", "window": 1, "max": 2.5}]}},
            },
            "$.tools.t.limits[0].max: expected a whole number",
        ),
        (
            {
                "version": "1",
                "tools": {
                    "t": {"limits": [{"counter": "c", "window": 1, "max": 1, "scope": "team"}]}
                },
            },
            '$.tools.t.limits[0].scope: expected "grant" or "identity" or "session" or "global"',
        ),
        (
            {
                "version": "1",
                "tools": {
                    "t": {"action": "deny", "limits": [{"counter": "c", "window": 1, "max": 1}]}
                },
            },
            "$.tools.t: a denied tool is never counted or checked",
        ),
        (
            {
                "version": "1",
                "tools": {
                    "a": {"limits": [{"counter": "c", "window": 60, "max": 5}]},
                    "b": {"limits": [{"counter": "c", "window": 60, "max": 6}]},
                },
            },
            '$.tools.b.limits[0]: counter "c" is one shared budget but is defined differently at '
            "$.tools.a.limits[0]",
        ),
        (
            {"version": "1", "tools": {"db.drop table": {"action": 1}}},
            '$.tools["db.drop table"].action',
        ),
        (
            {"version": "1", "methods": {"tools/call": {"action": "deny"}}},
            '$.methods["tools/call"]: tool calls',
        ),
    ],
)
def test_each_problem_names_the_path_and_the_fix(doc: object, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(doc)), problems(doc)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"version": "1", "defualt": "deny"}, '$.defualt: unknown key (did you mean "default"?)'),
        ({"version": "1", "default": "denny"}, 'got "denny" (did you mean "deny"?)'),
        (
            {
                "version": "1",
                "tools": {"t": {"limits": [{"counter": "c", "window": "minutes", "max": 1}]}},
            },
            "got 'minutes' (did you mean \"minute\"?)",
        ),
        (
            {"version": "1", "tools": {"t": {"reson": "x"}}},
            'unknown key (did you mean "reason"?)',
        ),
    ],
)
def test_a_near_miss_gets_a_did_you_mean(doc: object, expected: str) -> None:
    assert any(expected in p for p in problems(doc)), problems(doc)


def test_nothing_close_gets_no_guess() -> None:
    assert not any("did you mean" in p for p in problems({"version": "1", "zzzz": 1}))


def test_all_problems_are_reported_at_once_with_the_file_name() -> None:
    doc = {"version": "3", "oops": 1, "tools": {"a": {"action": "x"}, "b": {"limits": 5}}}
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps(doc).encode(), "/etc/mcp/policy.json")
    assert len(info.value.problems) == 4
    assert all(line.startswith("/etc/mcp/policy.json: $") for line in str(info.value).splitlines())


@pytest.mark.parametrize(
    ("text", "source", "expected"),
    [
        (b'{"version": "1", "tools": {"a": {}, "a": {}}}', "p.json", "$.tools.a: duplicate key"),
        (b'version: "1"\ntools:\n  a: {}\n  a: {}\n', "p.yaml", "$.tools.a: duplicate key"),
        (b'{"version": "1",', "p.json", "$: invalid JSON at line 1"),
        (b"version: [1\n", "p.yaml", "$: invalid YAML"),
        (b"\xff", "p.json", "$: not UTF-8"),
    ],
)
def test_duplicates_and_syntax_errors_are_refused(text: bytes, source: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source)
    assert any(f"{p.path}: {p.message}".startswith(expected) for p in info.value.problems)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"missing\.json: \$: cannot read the file"):
        load_policy(tmp_path / "missing.json")


def test_named_and_numeric_windows() -> None:
    limits = [
        {"counter": f"c{i}", "window": w, "max": 1}
        for i, w in enumerate(["second", "minute", "hour", "day", 90])
    ]
    doc = {"version": "1", "tools": {"t": {"limits": limits}}}
    entry = parse_policy(json.dumps(doc).encode(), "p.json").tools.match("t")
    assert entry is not None
    assert [c.limit.window for c in entry.rules[0].counts] == [1, 60, 3600, 86400, 90]


def test_version_is_a_hash_of_the_content() -> None:
    a = parse_policy(b'{"version": "1"}', "a.json")
    b = parse_policy(b'{"version": "1", "default": "deny"}', "a.json")
    assert a.version != b.version
    assert a.version == parse_policy(b'{"version": "1"}', "other.json").version
