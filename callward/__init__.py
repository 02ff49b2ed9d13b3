"""callward: policy gateway, audit trail and replay for AI-agent tool calls (MCP).

Every component lives under this one import name (``callward.enforcer``,
``callward.collector``, ...), so installing callward never shadows another
distribution's top-level package.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("callward")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
