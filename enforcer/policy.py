"""The policy, as the rest of callward imports it: loading and the compiled form in one name.

The work is split by job, as a compiler separates parsing from the tree it builds:

- :mod:`callward.enforcer.policy_load` reads, validates and compiles a file, reporting
  every error as ``FILE:LINE:COL: code: message``;
- :mod:`callward.enforcer.policy_model` is the compiled form (:class:`CompiledPolicy`,
  :class:`ToolRule`, :class:`Rule`, :class:`Condition`, :class:`Limit`) that the engine,
  replay and the batch path read.

This module only re-exports both, so ``from callward.enforcer.policy import ...`` keeps
working for every caller; evaluation lives in :mod:`callward.enforcer.engine`.
"""

from __future__ import annotations

from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.policy_load import (
    MAX_POLICY_BYTES,
    check_file,
    compile_document,
    compile_text,
    load_policy,
    parse_text,
)
from callward.enforcer.policy_model import (
    ACTIONS,
    OPS,
    PATH_ROOTS,
    RULE_ACTIONS,
    SCOPES,
    SUPPORTED_VERSIONS,
    WINDOWS,
    CompiledPolicy,
    Condition,
    Limit,
    Rule,
    ToolRule,
    canonical_json,
    pointer_escape,
    policy_version,
)

__all__ = [
    "ACTIONS",
    "MAX_POLICY_BYTES",
    "OPS",
    "PATH_ROOTS",
    "RULE_ACTIONS",
    "SCOPES",
    "SUPPORTED_VERSIONS",
    "WINDOWS",
    "CompiledPolicy",
    "Condition",
    "Limit",
    "PolicyInvalid",
    "Rule",
    "ToolRule",
    "canonical_json",
    "check_file",
    "compile_document",
    "compile_text",
    "load_policy",
    "parse_text",
    "pointer_escape",
    "policy_version",
]
