"""What each condition op means, compiled once per condition into a closure.

A condition is evaluated on every call that reaches its rule, so the work that depends
only on the policy (which request field the path starts at, which op, the value's type,
whether the rule is a ``require`` or a ``deny_if``) is done here at load time:
:func:`compile_condition` returns one function of the request that does only the
per-call part. The compiled form builds it when a
:class:`~callward.enforcer.policy_model.Condition` is made, so every condition that can
be evaluated already has its closure, and the engine calls it without dispatching on the
op.

The semantics, which docs/policy.md states, are all here: a missing path makes every op
false except ``exists``; equality is JSON equality (``true`` is not ``1``, ``1`` equals
``1.0``); ordering ops need a number; ``regex`` full-matches a string; ``contains`` is
substring on a string and membership on a list; ``path_under`` normalises a POSIX path
(:func:`~callward.enforcer.json_values.normal_path`) and compares whole segments;
``type`` names the JSON type. A present value the op cannot judge (a string under
``gt``, a number under ``regex``, a relative path under ``path_under``) fails closed: the
condition holds in a ``deny_if`` rule and fails in a ``require`` rule, so either way the
call is denied (``on_wrong_type``, fixed at load). The fast paths below are the general
rule specialised to a value type known at load time, never a different rule; a property
test holds them equal to a plain interpreter of the same rules.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from callward.enforcer.json_values import normal_path, python_types

if TYPE_CHECKING:
    from callward.enforcer.engine import Request

Test = Callable[["Request"], bool]
"""A compiled condition or rule: does it hold for this request?"""

MISSING: Any = object()
"""What :func:`lookup` returns for a path the request does not have."""

# Request fields a path can start at, by the name the policy uses.
_ROOT_FIELDS = {
    "args": "arguments",
    "tool": "tool",
    "server": "server",
    "agent_id": "agent_id",
    "session_id": "session_id",
    "grant": "grant",
}
_ORDER = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}


def walk(cur: Any, segments: tuple[str, ...]) -> Any:
    """Follow ``segments`` into objects and lists (a digit segment indexes a list)."""
    for seg in segments:
        # type() first: isinstance against the Mapping ABC is several times slower.
        if type(cur) is dict or isinstance(cur, Mapping):
            if seg not in cur:
                return MISSING
            cur = cur[seg]
        elif isinstance(cur, list) and seg.isdigit():
            i = int(seg)
            if i >= len(cur):
                return MISSING
            cur = cur[i]
        else:
            return MISSING
    return cur


def lookup(req: Request, path: tuple[str, ...]) -> Any:
    """The value at a condition path (``args.a.b``, ``tool``, ``agent_id`` …) or :data:`MISSING`."""
    name = _ROOT_FIELDS.get(path[0])
    if name is None:
        return MISSING
    return walk(getattr(req, name), path[1:])


def json_eq(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# --------------------------------------------------------------------------- compiling


def compile_condition(
    path: tuple[str, ...],
    op: str,
    value: Any,
    pattern: re.Pattern[str] | None,
    on_wrong_type: bool = False,
) -> Test:
    """The closure deciding whether the condition ``path op value`` holds for a request.

    ``on_wrong_type`` is what it answers for a present value its op cannot judge: true in
    a ``deny_if`` rule, false in a ``require`` rule (both deny the call).
    """
    get = _getter(path)
    if op == "exists":
        return lambda req: (get(req) is not MISSING) == value
    if op == "regex" and pattern is None:
        pattern = re.compile(value)
    check = _value_check(op, value, pattern, on_wrong_type)
    if path[0] == "args" and len(path) == 2:
        return _arg_test(path[1], op, pattern, check)

    def test(req: Request) -> bool:
        actual = get(req)
        return actual is not MISSING and check(actual)

    return test


def _arg_test(
    key: str, op: str, pattern: re.Pattern[str] | None, check: Callable[[Any], bool]
) -> Test:
    """``args.<key>``, the common case: the dict read inlined, one call fewer per test.

    A ``regex`` on a string argument is answered in the closure itself (a string is what
    the op's check would accept first); anything else goes through ``check``.
    """
    rest = (key,)
    if op == "regex" and pattern is not None:
        fullmatch = pattern.fullmatch

        def test_regex(req: Request) -> bool:
            args = req.arguments
            actual = args.get(key, MISSING) if type(args) is dict else walk(args, rest)
            if type(actual) is str:
                return fullmatch(actual) is not None
            return actual is not MISSING and check(actual)

        return test_regex

    def test_arg(req: Request) -> bool:
        args = req.arguments
        actual = args.get(key, MISSING) if type(args) is dict else walk(args, rest)
        return actual is not MISSING and check(actual)

    return test_arg


def compile_rule(tests: tuple[Test, ...]) -> Test:
    """All of ``tests`` hold (true for none), first false one stops the evaluation."""
    if not tests:
        return lambda req: True
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda req: a(req) and b(req)

    def every(req: Request) -> bool:
        for t in tests:
            if not t(req):
                return False
        return True

    return every


def _getter(path: tuple[str, ...]) -> Callable[[Request], Any]:
    """The value at ``path`` for a request, or MISSING; ``args.<key>`` on a dict is inlined."""
    name = _ROOT_FIELDS.get(path[0])
    if name is None:
        return lambda req: MISSING
    field = operator.attrgetter(name)
    rest = path[1:]
    if not rest:
        return field
    if len(rest) == 1:
        (key,) = rest

        def one(req: Request) -> Any:
            cur = field(req)
            if type(cur) is dict:
                return cur.get(key, MISSING)
            return walk(cur, rest)

        return one
    return lambda req: walk(field(req), rest)


def _value_check(
    op: str, v: Any, pattern: re.Pattern[str] | None, wrong: bool
) -> Callable[[Any], bool]:
    """The op applied to a present value; ``wrong`` answers a value it cannot judge."""
    if op in ("eq", "neq", "in", "not_in"):
        return _equality_check(op, v)
    if op in _ORDER:
        cmp = _ORDER[op]

        def ordered(actual: Any) -> bool:
            t = type(actual)
            if t is int:
                return bool(cmp(actual, v))
            if t is float or is_number(actual):
                # NaN has no place in any order (and cannot arrive as JSON): fail closed.
                return bool(cmp(actual, v)) if actual == actual else wrong
            return wrong

        return ordered
    if op == "regex":
        assert pattern is not None
        fullmatch = pattern.fullmatch
        return lambda actual: fullmatch(actual) is not None if isinstance(actual, str) else wrong
    if op == "contains":
        return _contains_check(v, wrong)
    if op == "path_under":
        return _path_under_check(v, wrong)
    if op == "type":
        return _type_check(v)
    raise ValueError(f"unknown op {op!r}")


def _equality_check(op: str, v: Any) -> Callable[[Any], bool]:
    """eq, neq, in, not_in; a plain string value, or a list of them, gets a direct test.

    For a ``str`` value, JSON equality is ``==``: a bool never equals a string, so the
    bool rule of :func:`json_eq` cannot change the answer.
    """
    if op in ("eq", "neq"):
        if type(v) is str:
            same: Callable[[Any], bool] = lambda actual: bool(actual == v)  # noqa: E731
        else:
            same = lambda actual: json_eq(actual, v)  # noqa: E731
        if op == "eq":
            return same
        return lambda actual: not same(actual)
    if all(type(x) is str for x in v):
        strings = frozenset(v)

        def member(actual: Any) -> bool:
            if type(actual) is str:
                return actual in strings
            return any(json_eq(actual, x) for x in v)

    else:

        def member(actual: Any) -> bool:
            return any(json_eq(actual, x) for x in v)

    if op == "in":
        return member
    return lambda actual: not member(actual)


def _contains_check(v: Any, wrong: bool) -> Callable[[Any], bool]:
    """Substring of a string (for a string ``v``), member of a list; else not judgeable."""
    substring = isinstance(v, str)

    def contains(actual: Any) -> bool:
        if isinstance(actual, str):
            return v in actual if substring else wrong
        if isinstance(actual, list):
            return any(json_eq(x, v) for x in actual)
        return wrong

    return contains


def _path_under_check(v: Any, wrong: bool) -> Callable[[Any], bool]:
    """Under one of the directories ``v`` (or one of them), whole segments compared."""
    dirs = []
    for d in [v] if isinstance(v, str) else v:
        n = normal_path(d) if isinstance(d, str) else None
        if n is None:
            raise ValueError(f"path_under needs absolute directories, got {d!r}")
        dirs.append(n)
    exact = frozenset(dirs)
    prefixes = tuple(d if d == "/" else d + "/" for d in dirs)

    def under(actual: Any) -> bool:
        if not isinstance(actual, str):
            return wrong
        p = normal_path(actual)
        if p is None:
            return wrong
        return p in exact or p.startswith(prefixes)

    return under


def _type_check(v: Any) -> Callable[[Any], bool]:
    """The JSON type of the value is ``v`` (or one of them); every value has one."""
    names = (v,) if isinstance(v, str) else tuple(v)
    types = python_types(names)
    if "object" not in names:
        return lambda actual: type(actual) in types
    return lambda actual: type(actual) in types or isinstance(actual, Mapping)
