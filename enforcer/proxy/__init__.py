"""The MCP gateway: a stdio and streamable-HTTP proxy that checks every ``tools/call``.

``gate`` decides, records and reports one call; ``relay`` forwards one MCP session
message by message; ``stdio`` and ``http`` are the two ways in; ``upstream`` the two
ways out; ``tokens`` maps bearer tokens to grants; ``config`` and ``cli`` wire it up.
README.md in this folder explains the trade-offs.
"""
