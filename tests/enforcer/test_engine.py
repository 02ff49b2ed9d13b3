"""The decision engine: operators, evaluation order, windows, scopes and rollback."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from callward.enforcer.engine import (
    InMemoryLimitState,
    Request,
    applicable_limits,
    decide,
    holds,
    visible_tools,
)
from callward.enforcer.policy import Condition, compile_document, compile_text

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def policy(doc: dict[str, Any]):
    return compile_document({"version": "1", **doc})


def cond(path: str, op: str, value: Any = None) -> Condition:
    import re

    return Condition(
        tuple(path.split(".")), op, value, re.compile(value) if op == "regex" else None
    )


def req(tool: str = "t", **args: Any) -> Request:
    return Request(tool=tool, arguments=args, grant="g1", agent_id="a1", session_id="s1")


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        ("eq", 5, 5, True),
        ("eq", 5, 5.0, True),
        ("eq", 1, True, False),  # JSON: true is not 1
        ("eq", True, True, True),
        ("eq", "a", "A", False),
        ("eq", None, None, True),
        ("eq", {"k": 1}, {"k": 1}, True),
        ("neq", 5, 6, True),
        ("neq", 5, 5, False),
        ("neq", 0, False, True),
        ("in", ["usd", "eur"], "usd", True),
        ("in", ["usd", "eur"], "gbp", False),
        ("in", [1, 2], True, False),
        ("in", [], "x", False),
        ("not_in", ["usd"], "eur", True),
        ("not_in", ["usd"], "usd", False),
        ("not_in", [], "x", True),
        ("lt", 10, 9.99, True),
        ("lt", 10, 10, False),
        ("lte", 10, 10, True),
        ("lte", 10, 10.0001, False),
        ("gt", 100, 101, True),
        ("gt", 100, 100, False),
        ("gte", 100, 100, True),
        ("gt", 1, "2", False),  # strings are not numbers
        ("gt", 0, True, False),  # booleans are not numbers
        ("lt", 1, None, False),
        ("regex", r"/etc/.*", "/etc/passwd", True),
        ("regex", r"/etc/.*", "/home/etc/x", False),
        ("regex", r".*\.env", "config/.env", True),
        ("regex", r"x", 5, False),  # regex needs a string
        ("contains", "rm -rf", "sudo rm -rf /", True),
        ("contains", "rm -rf", "ls", False),
        ("contains", "admin", ["user", "admin"], True),
        ("contains", "admin", ["user"], False),
        ("contains", 3, [1, 2, 3], True),
        ("contains", "a", 123, False),
        ("exists", True, "anything", True),
        ("exists", True, None, True),  # present with a null value still exists
        ("exists", False, "anything", False),
    ],
)
def test_operator(op: str, value: Any, actual: Any, expected: bool) -> None:
    assert holds(cond("args.x", op, value), req(x=actual)) is expected


@pytest.mark.parametrize(
    "op", ["eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains"]
)
def test_missing_path_makes_every_op_false(op: str) -> None:
    value: Any = {"in": [1], "not_in": [1], "regex": "x"}.get(op, 1)
    assert holds(cond("args.absent", op, value), req(x=1)) is False


def test_exists_false_on_missing_path() -> None:
    assert holds(cond("args.absent", "exists", False), req()) is True
    assert holds(cond("args.absent", "exists", True), req()) is False


def test_nested_paths_and_list_indexes() -> None:
    r = req(to={"address": "a@example.com"}, files=["a.py", "b.py"])
    assert holds(cond("args.to.address", "regex", ".*@example\\.com"), r)
    assert holds(cond("args.files.1", "eq", "b.py"), r)
    assert not holds(cond("args.files.2", "exists", True), r)
    assert not holds(cond("args.to.address.deeper", "exists", True), r)


def test_request_fields_are_addressable() -> None:
    r = Request("t", {}, server="github", grant="ci", agent_id="bot", session_id="s9")
    assert holds(cond("grant", "eq", "ci"), r)
    assert holds(cond("server", "eq", "github"), r)
    assert holds(cond("agent_id", "in", ["bot"]), r)
    assert holds(cond("session_id", "eq", "s9"), r)
    assert holds(cond("tool", "eq", "t"), r)


# --------------------------------------------------------------------------- evaluation order


def test_default_deny_and_empty_entry_allows() -> None:
    p = policy({"default": "deny", "tools": {"ok": {}}})
    st = InMemoryLimitState()
    assert decide(p, req("ok"), st, T0)[:2] == ("allow", "/tools/ok")
    d = decide(p, req("other"), st, T0)
    assert (d.decision, d.rule) == ("deny", "/default")
    assert "other" in d.message


def test_default_allow() -> None:
    p = policy({"default": "allow"})
    assert decide(p, req("anything"), InMemoryLimitState(), T0)[:2] == ("allow", "/default")


def test_hidden_tool_is_denied_and_not_listed() -> None:
    p = policy(
        {"default": "allow", "hide": ["secret_*", "drop_table"], "tools": {"drop_table": {}}}
    )
    st = InMemoryLimitState()
    assert decide(p, req("drop_table"), st, T0)[:2] == ("deny", "/hide/1")
    assert decide(p, req("secret_read"), st, T0)[:2] == ("deny", "/hide/0")
    assert visible_tools(p, "", ["a", "secret_x", "drop_table"]) == ["a"]


def test_hide_star_hides_everything() -> None:
    p = policy({"default": "allow", "hide": ["*"]})
    assert visible_tools(p, "", ["a", "b"]) == []
    assert decide(p, req("a"), InMemoryLimitState(), T0).decision == "deny"


def test_require_and_deny_if_order_and_messages() -> None:
    p = policy(
        {
            "default": "deny",
            "tools": {
                "create_charge": {
                    "on_deny": "charges are restricted",
                    "require": [
                        {"conditions": [{"path": "args.currency", "op": "in", "value": ["usd"]}]}
                    ],
                    "deny_if": [
                        {
                            "conditions": [{"path": "args.amount", "op": "gt", "value": 1000}],
                            "on_deny": "amount over 1000",
                        },
                        {"conditions": [{"path": "args.amount", "op": "gt", "value": 10}]},
                    ],
                }
            },
        }
    )
    st = InMemoryLimitState()
    d = decide(p, req("create_charge", currency="eur", amount=5), st, T0)
    assert (d.decision, d.rule, d.message) == (
        "deny",
        "/tools/create_charge/require/0",
        "charges are restricted",
    )
    d = decide(p, req("create_charge", currency="usd", amount=5000), st, T0)
    assert (d.decision, d.rule, d.message) == (
        "deny",
        "/tools/create_charge/deny_if/0",
        "amount over 1000",
    )
    d = decide(p, req("create_charge", currency="usd", amount=50), st, T0)
    assert (d.rule, d.message) == ("/tools/create_charge/deny_if/1", "charges are restricted")
    assert decide(p, req("create_charge", currency="usd", amount=5), st, T0).decision == "allow"


def test_empty_deny_if_always_denies() -> None:
    p = policy(
        {
            "tools": {
                "refund": {"deny_if": [{"conditions": [], "on_deny": "requires human approval"}]}
            }
        }
    )
    d = decide(p, req("refund", amount=1), InMemoryLimitState(), T0)
    assert (d.decision, d.rule, d.message) == (
        "deny",
        "/tools/refund/deny_if/0",
        "requires human approval",
    )


def test_actions() -> None:
    p = policy(
        {
            "default": "allow",
            "tools": {
                "rm": {"action": "deny", "reason": "never"},
                "pay": {"action": "require_approval"},
                "send": {"deny_if": [{"conditions": [], "action": "require_approval"}]},
            },
        }
    )
    st = InMemoryLimitState()
    assert decide(p, req("rm"), st, T0)[:3] == ("deny", "/tools/rm/action", "never")
    assert decide(p, req("pay"), st, T0)[:2] == ("require_approval", "/tools/pay/action")
    assert decide(p, req("send"), st, T0)[:2] == ("require_approval", "/tools/send/deny_if/0")


def test_deny_beats_require_approval() -> None:
    p = policy(
        {
            "tools": {
                "pay": {
                    "action": "require_approval",
                    "deny_if": [
                        {"conditions": [{"path": "args.amount", "op": "gt", "value": 100}]}
                    ],
                }
            }
        }
    )
    assert decide(p, req("pay", amount=500), InMemoryLimitState(), T0).decision == "deny"
    assert decide(p, req("pay", amount=5), InMemoryLimitState(), T0).decision == "require_approval"


def test_glob_and_server_precedence() -> None:
    p = policy(
        {
            "default": "deny",
            "tools": {
                "*": {"action": "deny", "reason": "catch-all"},
                "fs_*": {},
                "fs_write*": {"action": "deny"},
                "github/create_issue": {"action": "require_approval"},
                "create_issue": {},
                "github/*": {"action": "deny"},
            },
        }
    )
    st = InMemoryLimitState()

    def rule(tool: str, server: str = "") -> str:
        return decide(p, Request(tool, {}, server=server), st, T0).rule

    assert rule("fs_read") == "/tools/fs_*"
    assert rule("fs_write_file") == "/tools/fs_write*/action"
    assert rule("create_issue", "github") == "/tools/github~1create_issue/action"
    assert rule("create_issue", "gitlab") == "/tools/create_issue"
    assert rule("list_repos", "github") == "/tools/github~1*/action"
    assert rule("other") == "/tools/*/action"


# --------------------------------------------------------------------------- limits


SEED = {
    "default": "deny",
    "tools": {
        "run_python_file": {
            "limits": [
                {"counter": "run_python_file_rate", "window": "minute", "max": 10, "scope": "grant"}
            ]
        }
    },
}


def test_seed_policy_allows_ten_per_minute_per_grant() -> None:
    p = policy(SEED)
    st = InMemoryLimitState()
    out = [decide(p, req("run_python_file"), st, T0 + i).decision for i in range(11)]
    assert out == ["allow"] * 10 + ["deny"]
    other = Request("run_python_file", {}, grant="g2")
    assert decide(p, other, st, T0 + 11).decision == "allow"


def test_window_boundaries_are_calendar_aligned_utc() -> None:
    p = policy(SEED)
    st = InMemoryLimitState()
    minute = T0  # exactly 12:00:00
    for i in range(10):
        assert decide(p, req("run_python_file"), st, minute + 59.999 - i * 0.001).allowed
    assert not decide(p, req("run_python_file"), st, minute + 59.9999).allowed
    # 12:01:00.000 opens a new window even though fewer than 60 s passed since the last call.
    assert decide(p, req("run_python_file"), st, minute + 60.0).allowed
    # A sliding window would still deny here; a calendar window does not.
    assert decide(p, req("run_python_file"), st, minute - 0.001).allowed  # previous minute


@pytest.mark.parametrize(("window", "length"), [("minute", 60), ("hour", 3600), ("day", 86400)])
def test_each_window_length(window: str, length: int) -> None:
    p = policy(
        {
            "default": "allow",
            "all_tools": {
                "limits": [{"counter": "c", "window": window, "max": 1, "scope": "global"}]
            },
        }
    )
    st = InMemoryLimitState()
    start = (T0 // 86400) * 86400  # midnight UTC is a boundary of every window
    assert decide(p, req(), st, start).allowed
    assert decide(p, req(), st, start + length - 1).decision != "allow"
    assert decide(p, req(), st, start + length).allowed


@pytest.mark.parametrize(
    ("scope", "same", "different"),
    [
        ("grant", Request("t", {}, grant="g", agent_id="x"), Request("t", {}, grant="h")),
        ("agent", Request("t", {}, agent_id="a", grant="z"), Request("t", {}, agent_id="b")),
        (
            "session",
            Request("t", {}, session_id="s", agent_id="q"),
            Request("t", {}, session_id="s2"),
        ),
        ("tool", Request("t", {}, grant="other"), Request("u", {})),
    ],
)
def test_scopes_are_isolated(scope: str, same: Request, different: Request) -> None:
    p = policy(
        {
            "default": "allow",
            "all_tools": {
                "limits": [{"counter": "c", "window": "minute", "max": 1, "scope": scope}]
            },
        }
    )
    st = InMemoryLimitState()
    first = {
        "grant": Request("t", {}, grant="g"),
        "agent": Request("t", {}, agent_id="a"),
        "session": Request("t", {}, session_id="s"),
        "tool": Request("t", {}),
    }[scope]
    assert decide(p, first, st, T0).allowed
    assert not decide(p, same, st, T0).allowed
    assert decide(p, different, st, T0).allowed


def test_global_scope_is_shared_by_everyone() -> None:
    p = policy(
        {
            "default": "allow",
            "all_tools": {
                "limits": [{"counter": "c", "window": "minute", "max": 2, "scope": "global"}]
            },
        }
    )
    st = InMemoryLimitState()
    assert decide(p, Request("a", {}, grant="1"), st, T0).allowed
    assert decide(p, Request("b", {}, grant="2"), st, T0).allowed
    assert not decide(p, Request("c", {}, grant="3"), st, T0).allowed


def test_denied_calls_consume_no_quota() -> None:
    p = policy(
        {
            "tools": {
                "t": {
                    "deny_if": [{"conditions": [{"path": "args.bad", "op": "eq", "value": True}]}],
                    "limits": [{"counter": "a", "window": "minute", "max": 2, "scope": "grant"}],
                }
            },
            "all_tools": {
                "limits": [{"counter": "b", "window": "minute", "max": 3, "scope": "grant"}]
            },
        }
    )
    st = InMemoryLimitState()
    for _ in range(5):
        assert decide(p, req("t", bad=True), st, T0).decision == "deny"
    assert st.counts == {}
    assert decide(p, req("t"), st, T0).allowed
    assert decide(p, req("t"), st, T0).allowed
    d = decide(p, req("t"), st, T0)  # limit a is full: b must not be charged
    assert d.rule == "/tools/t/limits/0"
    assert sorted(st.counts.values()) == [2, 2]


def test_rollback_gives_quota_back() -> None:
    p = policy(SEED)
    st = InMemoryLimitState()
    decisions = [decide(p, req("run_python_file"), st, T0) for _ in range(10)]
    assert not decide(p, req("run_python_file"), st, T0).allowed
    st.release(decisions[0].reserved)  # the upstream call failed: Report(outcome=error)
    assert decide(p, req("run_python_file"), st, T0).allowed
    assert not decide(p, req("run_python_file"), st, T0).allowed


def test_shared_counter_between_tools() -> None:
    lim = {"counter": "writes", "window": "hour", "max": 2, "scope": "agent"}
    p = policy({"tools": {"a": {"limits": [lim]}, "b": {"limits": [lim]}}})
    st = InMemoryLimitState()
    assert decide(p, req("a"), st, T0).allowed
    assert decide(p, req("b"), st, T0).allowed
    assert decide(p, req("a"), st, T0).rule == "/tools/a/limits/0"


def test_max_zero_denies_everything() -> None:
    p = policy(
        {
            "tools": {
                "t": {"limits": [{"counter": "z", "window": "day", "max": 0, "scope": "global"}]}
            }
        }
    )
    assert decide(p, req("t"), InMemoryLimitState(), T0).decision == "deny"


def test_prune_drops_finished_windows() -> None:
    p = policy(SEED)
    st = InMemoryLimitState()
    decide(p, req("run_python_file"), st, T0)
    assert st.prune(T0 + 30, {"run_python_file_rate": 60}) == 0
    assert st.prune(T0 + 60, {"run_python_file_rate": 60}) == 1
    assert st.counts == {}


def test_yaml_and_json_give_the_same_version() -> None:
    import json

    import yaml

    doc = {"version": "1", **SEED}
    a = compile_text(json.dumps(doc))
    b = compile_text(yaml.safe_dump(doc))
    assert a.version == b.version
    c = compile_text(json.dumps({**doc, "default": "allow"}))
    assert c.version != a.version


# --------------------------------------------------------------------------- found by mutation


def test_a_hide_entry_for_server_and_tool_names_its_pointer() -> None:
    p = policy({"default": "allow", "hide": ["other", "github/delete_*"]})
    hidden = decide(p, Request("delete_repo", {}, server="github"), InMemoryLimitState(), T0)
    assert (hidden.decision, hidden.rule) == ("deny", "/hide/1")
    assert decide(p, Request("delete_repo", {}, server="gitlab"), InMemoryLimitState(), T0).allowed
    tools = ["delete_repo", "list_repos", "other"]
    assert visible_tools(p, "github", tools) == ["list_repos"]
    assert visible_tools(p, "gitlab", tools) == ["delete_repo", "list_repos"]


def test_every_decision_carries_the_policy_version() -> None:
    p = policy(
        {
            "hide": ["h"],
            "tools": {
                "t": {"limits": [{"counter": "c", "window": "minute", "max": 1}]},
                "d": {"action": "deny"},
                "r": {"action": "require_approval"},
                "q": {"require": [{"conditions": [{"path": "args.x", "op": "exists"}]}]},
            },
        }
    )
    state = InMemoryLimitState()
    calls = ["h", "nope", "d", "r", "q", "t", "t"]
    decisions = [decide(p, req(tool), state, T0) for tool in calls]
    assert [d.decision for d in decisions] == [
        "deny", "deny", "deny", "require_approval", "deny", "allow", "deny"
    ]  # fmt: skip
    assert {d.policy_version for d in decisions} == {p.version}
    assert p.version.startswith("sha256:")


def test_applicable_limits_are_the_tools_then_all_tools() -> None:
    shared = {"counter": "all", "window": "hour", "max": 9}
    own = {"counter": "own", "window": "minute", "max": 9}
    both = policy(
        {"default": "allow", "all_tools": {"limits": [shared]}, "tools": {"t": {"limits": [own]}}}
    )
    only_own = policy({"tools": {"t": {"limits": [own]}}})
    entry = both.resolve("", "t")[0]
    assert [lim.counter for lim in applicable_limits(entry, both)] == ["own", "all"]
    assert [lim.counter for lim in applicable_limits(None, both)] == ["all"]
    assert [lim.counter for lim in applicable_limits(only_own.resolve("", "t")[0], only_own)] == [
        "own"
    ]
    # The same limits, in the same order, are the ones decide reserves.
    allowed = decide(both, req("t"), InMemoryLimitState(), T0)
    assert [k[0] for k in allowed.reserved] == ["own", "all"]


def test_an_allowed_call_names_the_entry_that_allowed_it() -> None:
    # Step 8 of the evaluation order: `/tools/NAME`, whatever the entry holds.
    p = policy(
        {
            "tools": {
                "plain": {},
                "checked": {
                    "require": [{"conditions": [{"path": "args.x", "op": "exists"}]}],
                    "deny_if": [{"conditions": [{"path": "args.x", "op": "eq", "value": 0}]}],
                },
                "limited": {"limits": [{"counter": "c", "window": "minute", "max": 5}]},
            }
        }
    )
    st = InMemoryLimitState()
    for tool in ("plain", "checked", "limited"):
        d = decide(p, req(tool, x=1), st, T0)
        assert (d.decision, d.rule) == ("allow", f"/tools/{tool}")
        assert (d.message, d.policy_version) == ("", p.version)  # an allow has no text


def test_a_hidden_tools_denial_names_the_tool() -> None:
    p = policy({"default": "allow", "hide": ["secret_*"]})
    d = decide(p, req("secret_tool"), InMemoryLimitState(), T0)
    assert (d.decision, d.rule) == ("deny", "/hide/0") and "secret_tool" in d.message


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ({"action": "deny"}, "action_deny"),
        ({"action": "require_approval"}, "action_approval"),
        ({"require": [{"conditions": [{"path": "args.x", "op": "exists"}]}]}, "require"),
        ({"deny_if": [{"conditions": [{"path": "tool", "op": "exists"}]}]}, "deny_if"),
        (
            {"deny_if": [{"conditions": [{"path": "tool", "op": "exists"}],
                          "action": "require_approval"}]},
            "approval",
        ),
    ],
)  # fmt: skip
def test_a_glob_entrys_default_texts_name_the_tool_called(entry: dict[str, Any], kind: str) -> None:
    from callward.enforcer.policy_model import default_message

    p = policy({"tools": {"fs_*": entry}})
    d = decide(p, req("fs_write"), InMemoryLimitState(), T0)
    assert d.decision != "allow" and d.message == default_message(kind, "fs_write")


def test_a_deny_rule_after_an_approval_rule_still_denies() -> None:
    # Step 5: deny rules win over approval rules wherever they stand; among approval rules
    # the first that holds names the decision.
    holds_always = [{"path": "tool", "op": "exists"}]
    ask = {"conditions": holds_always, "action": "require_approval"}
    p = policy({"tools": {"t": {"deny_if": [ask, ask, {"conditions": holds_always}]}}})
    d = decide(p, req("t"), InMemoryLimitState(), T0)
    assert (d.decision, d.rule) == ("deny", "/tools/t/deny_if/2")
    p = policy({"tools": {"t": {"deny_if": [ask, ask]}}})
    d = decide(p, req("t"), InMemoryLimitState(), T0)
    assert (d.decision, d.rule) == ("require_approval", "/tools/t/deny_if/0")
