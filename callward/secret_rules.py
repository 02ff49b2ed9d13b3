"""The maintained secret ruleset: gitleaks' rules, brought in as data.

gitleaks (MIT licence, https://github.com/gitleaks/gitleaks) publishes its detection rules
in ``config/gitleaks.toml``. ``scripts/update_secret_rules.py`` converts that file with
:func:`convert` into ``callward/data/secret_rules.json`` (shipped in the package, with the
source, the commit and the licence named in it and in ``callward/data/LICENSE.gitleaks``),
and :func:`load_rules` reads it when :mod:`callward.redact` is imported.

The rules are Go RE2 expressions, and Python's ``re`` reads most of them alike but not all:
:func:`translate` rewrites what it can (an inline ``(?i)`` in the middle of a pattern
becomes a scoped group up to the end of its enclosing group, ``\\z`` becomes ``\\Z``,
POSIX classes such as ``[[:alnum:]]`` are spelled out, ``(?<name>`` becomes
``(?P<name>``), and :func:`bounded` takes the backtracking blow-up out of the vendor rules;
a pattern it cannot translate is dropped and listed with its reason in the
data file (``dropped``), as are the rules callward leaves out on purpose (``EXCLUDED``):
a rule that needs a file path, one whose any-character run is unbounded (quadratic on
hostile input under a backtracking engine), and one whose keywords are in most text.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Any

DATA_PACKAGE = "callward.data"
DATA_FILE = "secret_rules.json"
LICENCE_FILE = "LICENSE.gitleaks"
SOURCE = "https://github.com/gitleaks/gitleaks/blob/{commit}/config/gitleaks.toml"
# Compiled as gitleaks' Go engine reads them: \w, \d, \s and \b are ASCII only.
FLAGS = re.ASCII

# Left out on purpose, with the reason (written into the data file's ``dropped`` list).
EXCLUDED = {
    "generic-api-key": "callward's own name/value rules (password, high_entropy_secret) "
    "cover it; its keywords (key, api, token, access...) are in most text, so it would send "
    "nearly every value past the screen",
    "twilio-api-key": "its one keyword, 'sk', is in most text (task, ask, disk); no longer "
    "literal to screen on",
}
# Keywords replaced because gitleaks' are too common to screen on; the rule's regex is the
# same, so only the secrets that also contain the narrower keyword are found.
KEYWORD_OVERRIDES = {
    "jwt": ["eyj"],  # 'ey' is in 'key', 'they'...; a JWT header's base64 starts with eyJ
    "vault-service-token": ["hvs."],  # 's.' is in most text; legacy s.<24> tokens not found
}
# Rules whose capture groups are pieces of the secret rather than the secret itself (a
# repeated part of a webhook URL, one JWT header field): the whole match is replaced.
WHOLE_MATCH = frozenset({"jwt-base64", "microsoft-teams-webhook"})
_POSIX = {
    "alnum": "a-zA-Z0-9",
    "alpha": "a-zA-Z",
    "ascii": "\\x00-\\x7f",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "\\w",
    "xdigit": "0-9A-Fa-f",
}
_FLAG_GROUP = re.compile(r"\(\?([imsU]*(?:-[imsU]+)?)\)")
# ``.``, ``(?s:.)`` or a class holding both \s and \S, repeated without bound.
_UNBOUNDED_ANY = re.compile(
    r"(?<!\\)(?:\.|\(\?s:\.\)|\[(?=[^\]]*\\s)(?=[^\]]*\\S)[^\]]*\])(?:\*|\+|\{\d+,\})"
)


# Rewrites that keep what a rule redacts and bound its cost under backtracking (gitleaks'
# engine is linear-time, ``re`` is not). The vendor rules read
# ``[\w.-]{0,50}?(?:vendor)(?:[ \t\w.-]{0,20})[\s'"]{0,3}(?:=|:|...)(secret)``, some with the
# lazy prefix twice: on a run of the vendor's name that costs up to 50 x 50 x 20 steps per
# position (seconds for 10 KB). The leading prefix only widens the match to the left, never
# the secret, so it goes; the run of name characters cannot give back a character the
# operator after it could use (none of = > : | ? , is in it), so it is made possessive.
_LEADING_CONTEXT = re.compile(r"^((?:\(\?[a-zA-Z-]*:)*)\[\\w\.-\]\{0,50\}\?")
_NAME_RUN = "(?:[ \\t\\w.-]{0,20})"
_NAME_RUN_POSSESSIVE = "[ \\t\\w.-]{0,20}+"


def bounded(pattern: str) -> str:
    """``pattern`` (translated) rewritten as described above; same redactions."""
    while True:
        stripped = _LEADING_CONTEXT.sub(r"\1", pattern, count=1)
        if stripped == pattern:
            break
        pattern = stripped
    return pattern.replace(_NAME_RUN, _NAME_RUN_POSSESSIVE)


class Untranslatable(ValueError):
    """An RE2 construct Python's ``re`` has no equivalent for."""


def translate(pattern: str) -> str:
    """``pattern`` (Go RE2 syntax) as a Python regular expression with the same meaning."""
    out: list[str] = []
    closers: list[int] = [0]  # per open group: scoped-flag groups to close at its end
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise Untranslatable("trailing backslash")
            e = pattern[i + 1]
            if e == "z":
                out.append("\\Z")
            elif e in "pPC":
                raise Untranslatable(f"\\{e} (Unicode classes) has no equivalent")
            elif e == "Q":
                end = pattern.find("\\E", i + 2)
                end = n if end < 0 else end
                out.append(re.escape(pattern[i + 2 : end]))
                i = end + 2
                continue
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                name = pattern[i + 2 : end] if end > 0 else ""
                negated = name.startswith("^")
                if negated or name not in _POSIX:
                    raise Untranslatable(f"POSIX class [:{name}:]")
                out.append(_POSIX[name])
                i = end + 2
                continue
            if c == "]":
                in_class = False
            elif c == "[":
                out.append("\\[")  # a literal [ in a class; Python would warn of nesting
                i += 1
                continue
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):  # a ] first in a class is a literal
                out.append("\\]")
                i += 1
            continue
        if c == "(":
            flags = _FLAG_GROUP.match(pattern, i)
            if flags:
                if "U" in flags.group(1):
                    raise Untranslatable("(?U) ungreedy mode")
                # RE2 applies it to the rest of the enclosing group: scope it so.
                if flags.group(1):
                    out.append(f"(?{flags.group(1)}:")
                    closers[-1] += 1
                i = flags.end()
                continue
            if pattern.startswith("(?<", i) and not pattern.startswith(("(?<=", "(?<!"), i):
                out.append("(?P<")
                i += 3
            else:
                out.append(c)
                i += 1
            closers.append(0)
            continue
        if c == ")":
            if len(closers) < 2:
                raise Untranslatable("unbalanced parenthesis")
            out.append(")" * closers.pop())
            out.append(")")
            i += 1
            continue
        out.append(c)
        i += 1
    if in_class or len(closers) != 1:
        raise Untranslatable("unterminated class or group")
    out.append(")" * closers[0])
    return "".join(out)


def compile_translated(pattern: str) -> re.Pattern[str]:
    """Compile a translated pattern; a warning (a construct ``re`` reads differently from
    RE2, such as a nested set) counts as a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return re.compile(pattern, FLAGS)


def kind_of(rule_id: str) -> str:
    """The marker kind of a rule: its id in snake case (``github-pat`` -> ``github_pat``)."""
    return re.sub(r"[^a-z0-9]+", "_", rule_id.lower()).strip("_")


def _allowlists(rule: dict[str, Any]) -> list[dict[str, Any]]:
    """The allowlists of ``rule`` that can apply to text with no file path or commit."""
    kept = []
    for allow in rule.get("allowlists", []):
        if allow.get("paths") or allow.get("commits"):
            continue  # needs a path or a commit, which a tool call has not
        regexes = [compile_translated(translate(r)).pattern for r in allow.get("regexes", [])]
        stopwords = [w.lower() for w in allow.get("stopwords", [])]
        if regexes or stopwords:
            kept.append(
                {
                    "condition": allow.get("condition", "OR").upper(),
                    "target": allow.get("regexTarget", "secret"),
                    "regexes": regexes,
                    "stopwords": stopwords,
                }
            )
    return kept


def convert(config: dict[str, Any], commit: str) -> dict[str, Any]:
    """The data file's content from a parsed gitleaks.toml at ``commit``."""
    rules: list[dict[str, Any]] = []
    dropped: list[dict[str, str]] = []
    for rule in config.get("rules", []):
        rule_id = rule["id"]

        def drop(reason: str, rule_id: str = rule_id) -> None:
            dropped.append({"id": rule_id, "reason": reason})

        if rule_id in EXCLUDED:
            drop(EXCLUDED[rule_id])
            continue
        if "regex" not in rule:
            drop("matches file paths only")
            continue
        if rule.get("path"):
            drop("needs a file path as well as the text")
            continue
        try:
            pattern = bounded(translate(rule["regex"]))
            compile_translated(pattern)
            allowlists = _allowlists(rule)
        except (Untranslatable, re.error, Warning) as e:
            drop(f"not translatable to Python re: {e}")
            continue
        if _UNBOUNDED_ANY.search(pattern):
            drop("an unbounded any-character run: quadratic on hostile input under re")
            continue
        keywords = KEYWORD_OVERRIDES.get(rule_id) or [k.lower() for k in rule.get("keywords", [])]
        if not keywords:
            drop("no keyword to screen on")
            continue
        entry: dict[str, Any] = {
            "id": rule_id,
            "kind": kind_of(rule_id),
            "regex": pattern,
            "keywords": sorted(set(keywords)),
        }
        if rule_id in WHOLE_MATCH:
            entry["secretGroup"] = 0  # 0: the whole match; absent: the first non-empty group
        elif rule.get("secretGroup"):
            entry["secretGroup"] = int(rule["secretGroup"])
        if rule.get("entropy"):
            entry["entropy"] = float(rule["entropy"])
        if allowlists:
            entry["allowlists"] = allowlists
        rules.append(entry)
    return {
        "source": SOURCE.format(commit=commit),
        "commit": commit,
        "licence": "MIT, Copyright (c) 2019 Zachary Rice; see LICENSE.gitleaks beside this file",
        "rules": rules,
        "dropped": dropped,
    }


@dataclass(frozen=True)
class Allowlist:
    """Findings a rule lets through (gitleaks' ``[[rules.allowlists]]``): a regex on the
    secret, the whole match or its line, or a stopword in the secret."""

    all_of: bool
    target: str
    regexes: tuple[re.Pattern[str], ...]
    stopwords: tuple[str, ...]

    def allows(self, secret: str, match: str, line: str) -> bool:
        text = {"match": match, "line": line}.get(self.target, secret)
        checks = []
        if self.regexes:
            checks.append(any(r.search(text) for r in self.regexes))
        if self.stopwords:
            lower = secret.lower()
            checks.append(any(w in lower for w in self.stopwords))
        return all(checks) if self.all_of else any(checks)


@dataclass(frozen=True)
class SecretRule:
    """One rule of the ruleset, compiled."""

    rule_id: str
    kind: str
    regex: re.Pattern[str]
    keywords: tuple[str, ...]
    secret_group: int | None = None  # None: the first non-empty group (or the match)
    entropy: float = 0.0
    allowlists: tuple[Allowlist, ...] = ()


def load_rules(text: str | None = None) -> tuple[list[SecretRule], dict[str, Any]]:
    """The compiled rules of the shipped data file (or of ``text``), and its header."""
    if text is None:
        text = resources.files(DATA_PACKAGE).joinpath(DATA_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    rules = [
        SecretRule(
            rule_id=r["id"],
            kind=r["kind"],
            regex=re.compile(r["regex"], FLAGS),
            keywords=tuple(r["keywords"]),
            secret_group=r.get("secretGroup"),
            entropy=r.get("entropy", 0.0),
            allowlists=tuple(
                Allowlist(
                    a["condition"] == "AND",
                    a["target"],
                    tuple(re.compile(p, FLAGS) for p in a["regexes"]),
                    tuple(a["stopwords"]),
                )
                for a in r.get("allowlists", [])
            ),
        )
        for r in data["rules"]
    ]
    header = {k: v for k, v in data.items() if k != "rules"}
    return rules, header
