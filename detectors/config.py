"""Thresholds and tool/argument vocabularies of the detectors, in one frozen config.

The defaults follow published guards rather than any one data set: agent runtimes stop an
agent that repeats the same action (OpenHands' stuck detector: 4 identical steps, 3 identical
errors, an A-B alternation over 6 steps; LangChain's ``max_iterations``); exfiltration needs
the "lethal trifecta" (private data, untrusted content, external communication; Simon
Willison, 2025) or a toxic flow from a private source to a public sink (Invariant Labs'
GitHub MCP analysis). detectors/README.md explains each value.
"""

from __future__ import annotations

from dataclasses import dataclass


def _words(*names: str) -> str:
    """A regex that matches any of ``names`` as a whole token of a tool name."""
    return r"(^|[^a-z0-9])(" + "|".join(names) + r")([^a-z0-9]|$)"


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    # ---- runaway
    loop_repeats: int = 5  # consecutive identical calls (same tool, same arguments)
    pingpong_calls: int = 6  # calls in a strict A-B-A-B alternation
    retry_failures: int = 5  # consecutive failed (error or denied) calls of one tool
    spike_min_per_minute: int = 60  # a session-minute below this is never a spike
    spike_factor: float = 5.0  # ... and it must exceed this many times the agent's p95
    long_session_factor: float = 5.0  # session length vs the agent's median
    long_session_min_calls: int = 60
    long_session_max_novelty: float = 0.25  # distinct calls / calls: below = going in circles
    long_session_min_failure: float = 0.5  # or this share of failed calls
    side_effect_repeats: int = 3  # identical side-effecting calls within one session
    # ---- exfiltration
    baseline_hours: float = 12.0  # "new destination" needs this much history of the agent
    bulk_reads: int = 10  # reads before a large send
    large_send_bytes: int = 4096
    large_send_factor: float = 10.0  # vs the agent's median outbound argument size
    blob_min_chars: int = 64
    blob_min_entropy_base64: float = 4.5  # bits per character
    blob_min_entropy_hex: float = 3.3
    max_span_ids: int = 200
    # ---- vocabularies (regexes, matched case-insensitively on tool names / argument text)
    read_tools: str = _words(
        "read", "get", "list", "query", "select", "search", "cat", "download", "open", "view",
        "describe", "show", "find", "export", "dump", "load", "retrieve", "lookup", "head",
        "tail", "contents", "sql", "execute", "fetch", "browse", "scrape",
    )  # fmt: skip
    egress_tools: str = _words(
        "send", "post", "email", "mail", "publish", "upload", "share", "webhook", "notify",
        "message", "tweet", "reply", "forward", "comment", "gist", "issue", "pull", "pr",
        "invite", "sms", "chat", "paste", "submit",
    )  # fmt: skip
    untrusted_tools: str = _words(
        "fetch", "browse", "scrape", "crawl", "web", "search", "url", "navigate", "http",
        "inbox", "rss", "page", "issue", "issues", "comments",
    )  # fmt: skip
    destructive_tools: str = _words(
        "delete", "remove", "rm", "drop", "truncate", "destroy", "purge", "wipe", "unlink",
        "erase", "shred", "clear",
    )  # fmt: skip
    side_effect_tools: str = _words(
        "send", "post", "email", "publish", "create", "charge", "pay", "payment", "refund",
        "transfer", "order", "book", "buy", "purchase", "deploy", "merge", "invite", "message",
        "submit", "comment",
    )  # fmt: skip
    # Arguments that name private data: secrets on disk, credential stores, personal or
    # financial tables, non-public repositories.
    private_arguments: str = (
        r"(\.env(\.[a-z]+)?\b|\.ssh/|id_(rsa|dsa|ecdsa|ed25519)|\.pem\b|\.p12\b|\.key\b"
        r"|\.aws/|credentials|\.netrc|\.npmrc|\.pypirc|\.git-credentials|kubeconfig|\.kube/"
        r"|/etc/(shadow|passwd)|secrets?[./_\"-]|password|private|internal|confidential"
        r"|\b(from|join)\s+[\"`]?([a-z_]+\.)?(customers?|users?|accounts?|employees?|patients?"
        r"|payments?|cards?|invoices?|salar[a-z]*|payroll|credentials?|secrets?|api_keys?)\b)"
    )
    # Text in a recorded tool result that reads as instructions to the model (prompt
    # injection); checked on ``gen_ai.tool.call.result`` style attributes.
    injection_text: str = (
        r"(ignore (all |any )?(previous|prior|above|earlier) (instructions|directions)"
        r"|disregard (the |all |your )?(previous|prior|above|system)"
        r"|you (must|should) now|new instructions|system prompt|do not (tell|inform|mention)"
        r"|without (telling|informing) the user|important:? (assistant|ai|agent)"
        r"|<\s*(system|instructions?)\s*>)"
    )
    # Attribute keys that may carry a result excerpt (OTel GenAI and common SDKs).
    result_attributes: tuple[str, ...] = (
        "gen_ai.tool.call.result",
        "gen_ai.tool.result",
        "tool.result",
        "output.value",
        "mcp.tool.result",
    )
