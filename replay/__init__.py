"""Replay recorded tool calls against a candidate policy with the enforcer's own engine.

``load`` reads the store, ``evaluate`` decides every call (vectorized stateless verdicts,
then the engine in time order where a limit is contended), ``compare`` sets baseline,
candidate and fidelity side by side, ``report`` builds the report document, ``render``
prints it, ``gates`` judges it and ``cli`` adds ``callward replay``.
"""
