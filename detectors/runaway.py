"""Runaway agents: loops, alternations, retry storms, rate spikes, endless sessions and
repeated side effects, each one DuckDB query over the ``calls`` table (see calls.py).

The patterns are the guards agent runtimes put in front of a stuck agent (OpenHands'
stuck detector, LangChain's ``max_iterations``, the loop limits of coding agents), turned
into after-the-fact queries: consecutive identical calls, an A-B-A-B alternation, a run of
failures of one tool, and budgets measured against the agent's *own* habits (its usual
session length, its usual calls per minute) so a batch agent's normal bursts stay quiet.

Every query returns the columns ``findings._finding`` expects:
kind, pattern, severity, agent_id, session_id, trace_id, service, first_seen, last_seen,
span_ids, calls, explanation.
"""

from __future__ import annotations

from callward.detectors.config import DetectorConfig

# Session columns carried into every finding (constant within a session).
_WHO = (
    "any_value(agent_id) AS agent_id, any_value(session_id) AS session_id, "
    "any_value(trace_id) AS trace_id, any_value(service) AS service"
)
_OUT = "agent_id, session_id, trace_id, service"


def setup_sql(cfg: DetectorConfig) -> tuple[str, ...]:
    """The session-ordered ``runs`` table the three consecutive-call patterns share.

    One window pass over all calls looks back just far enough to see whether a loop, an
    alternation or a failure run reaches its threshold somewhere in a session; only those
    (few) sessions are then ordered again and their runs numbered exactly. Sorting every
    call once per pattern was the cost this avoids.
    """
    depth = max(cfg.loop_repeats, cfg.pingpong_calls, cfg.retry_failures)
    lags = ", ".join(
        f"lag(sig, {k}) OVER w AS sig{k}, lag(tool, {k}) OVER w AS tool{k}, "
        f"lag(failed, {k}) OVER w AS failed{k}"
        for k in range(1, depth)
    )

    def sig(k: int) -> str:
        return "sig" if k == 0 else f"sig{k}"

    loop = " AND ".join(f"sig = sig{k}" for k in range(1, cfg.loop_repeats)) or "TRUE"
    alternation = " AND ".join(
        f"{sig(k)} = {sig(k + 2)} AND {sig(k)} <> {sig(k + 1)}"
        for k in range(max(cfg.pingpong_calls - 2, 1))
    )
    failures = " AND ".join(
        ["failed"] + [f"failed{k} AND tool{k} = tool" for k in range(1, cfg.retry_failures)]
    )
    return (
        f"""
        CREATE OR REPLACE TEMP TABLE stuck_sessions AS
        SELECT DISTINCT skey FROM (
          SELECT skey, sig, tool, failed, {lags}
          FROM calls WINDOW w AS (PARTITION BY skey ORDER BY ts, span_id)
        )
        WHERE coalesce({loop}, FALSE) OR coalesce({alternation}, FALSE)
           OR coalesce({failures}, FALSE)
        """,
        """
        CREATE OR REPLACE TEMP TABLE seq AS
        SELECT skey, ts, span_id, sig, tool, failed, decision = 'deny' AS denied, in_window,
               agent_id, session_id, trace_id, service,
               row_number() OVER w AS rn,
               lag(sig, 1) OVER w AS p1, lag(sig, 2) OVER w AS p2, lag(sig, 3) OVER w AS p3,
               lag(tool, 1) OVER w AS prev_tool, lag(failed, 1) OVER w AS prev_failed,
               lag(span_id, 1) OVER w AS s1, lag(span_id, 2) OVER w AS s2
        FROM calls SEMI JOIN stuck_sessions USING (skey)
        WINDOW w AS (PARTITION BY skey ORDER BY ts, span_id)
        """,
        """
        CREATE OR REPLACE TEMP TABLE runs AS
        SELECT *,
               sum(CASE WHEN sig = p1 THEN 0 ELSE 1 END) OVER v AS loop_run,
               sum(CASE WHEN failed AND prev_failed AND tool = prev_tool THEN 0 ELSE 1 END)
                 OVER v AS fail_run,
               sum(CASE WHEN alt AND prev_alt THEN 0 ELSE 1 END) OVER v AS alt_run
        FROM (
          SELECT *, coalesce(sig = p2 AND sig <> p1, FALSE) AS alt,
                 coalesce(p1 = p3 AND p1 <> p2, FALSE) AS prev_alt
          FROM seq
        )
        WINDOW v AS (PARTITION BY skey ORDER BY rn ROWS UNBOUNDED PRECEDING)
        """,
        "DROP TABLE seq",
    )


def identical_loop_sql(cfg: DetectorConfig) -> str:
    """The same tool with the same arguments, back to back, ``loop_repeats`` times or more."""
    return f"""
    WITH r AS (
      SELECT skey, loop_run, count(*) AS n, min(ts) AS t0, max(ts) AS t1,
             list(span_id ORDER BY rn) AS spans, any_value(tool) AS tool,
             sum(failed::INT) AS failures, {_WHO}
      FROM runs GROUP BY skey, loop_run
      HAVING count(*) >= {cfg.loop_repeats} AND bool_or(in_window)
    )
    SELECT 'runaway', 'identical_call_loop',
           CASE WHEN n >= {4 * cfg.loop_repeats} THEN 'high' ELSE 'medium' END,
           {_OUT}, t0, t1, spans, n,
           format('{{}} identical consecutive calls to {{}} (same arguments) in {{}} s; {{}} of them failed',
                  n, tool, CAST(round(epoch(t1) - epoch(t0)) AS BIGINT), failures)
    FROM r
    """


def ping_pong_sql(cfg: DetectorConfig) -> str:
    """Two different calls alternating A-B-A-B…, each repeated with the same arguments."""
    return f"""
    WITH r AS (
      SELECT skey, alt_run, count(*) + 2 AS n, min(ts) AS t0, max(ts) AS t1,
             list_concat([arg_min(s2, rn), arg_min(s1, rn)], list(span_id ORDER BY rn)) AS spans,
             arg_min(tool, rn) AS tool_a, arg_min(prev_tool, rn) AS tool_b, {_WHO}
      FROM runs WHERE alt GROUP BY skey, alt_run
      HAVING count(*) + 2 >= {cfg.pingpong_calls} AND bool_or(in_window)
    )
    SELECT 'runaway', 'ping_pong',
           CASE WHEN n >= {3 * cfg.pingpong_calls} THEN 'high' ELSE 'medium' END,
           {_OUT}, t0, t1, spans, n,
           format('{{}} calls alternating between the same two calls ({{}} and {{}}) with no progress',
                  n, tool_a, tool_b)
    FROM r
    """


def retry_storm_sql(cfg: DetectorConfig) -> str:
    """One tool failing (error or denied) again and again with nothing else in between."""
    return f"""
    WITH r AS (
      SELECT skey, fail_run, any_value(tool) AS tool, count(*) AS n, min(ts) AS t0,
             max(ts) AS t1, list(span_id ORDER BY rn) AS spans, count(DISTINCT sig) AS variants,
             sum(denied::INT) AS denied, {_WHO}
      FROM runs WHERE failed GROUP BY skey, fail_run
      HAVING count(*) >= {cfg.retry_failures} AND bool_or(in_window)
    )
    SELECT 'runaway', 'retry_storm',
           CASE WHEN n >= {4 * cfg.retry_failures} THEN 'high' ELSE 'medium' END,
           {_OUT}, t0, t1, spans, n,
           format('{{}} failed calls to {{}} in a row ({{}} denied by policy, {{}} argument variants) in {{}} s without a change of approach',
                  n, tool, denied, variants, CAST(round(epoch(t1) - epoch(t0)) AS BIGINT))
    FROM r
    """


def rate_spike_sql(cfg: DetectorConfig) -> str:
    """A session-minute far above what this agent usually does in a minute (its p95)."""
    return f"""
    WITH m AS (
      SELECT akey, skey, date_trunc('minute', ts) AS minute, count(*) AS n,
             bool_or(in_window) AS w
      FROM calls GROUP BY akey, skey, minute
    ), base AS (
      SELECT akey, quantile_cont(n, 0.95) AS p95 FROM m GROUP BY akey
    ), hot AS (
      SELECT m.skey, m.minute, m.n, b.p95 FROM m JOIN base b USING (akey)
      WHERE m.n >= greatest({cfg.spike_min_per_minute}, {cfg.spike_factor} * b.p95)
    ), per_session AS (
      SELECT skey, count(*) AS minutes, max(n) AS peak, any_value(p95) AS p95,
             min(minute) AS m0, max(minute) AS m1
      FROM hot GROUP BY skey
    ), rows AS (
      SELECT c.skey, c.ts, c.span_id, c.agent_id, c.session_id, c.trace_id, c.service,
             c.in_window
      FROM calls c JOIN hot h ON h.skey = c.skey AND date_trunc('minute', c.ts) = h.minute
    )
    SELECT 'runaway', 'rate_spike',
           CASE WHEN any_value(p.peak) >= {4 * cfg.spike_factor} * greatest(any_value(p.p95), 1)
                THEN 'high' ELSE 'medium' END,
           {_WHO}, min(r.ts), max(r.ts),
           list(r.span_id ORDER BY r.ts)[1:{cfg.max_span_ids}], count(*),
           format('{{}} calls per minute at peak ({{}} minute(s) over the threshold); this agent''s usual p95 is {{}} per minute',
                  any_value(p.peak), any_value(p.minutes), round(any_value(p.p95), 1))
    FROM rows r JOIN per_session p USING (skey)
    GROUP BY r.skey HAVING bool_or(r.in_window)
    """


def long_session_sql(cfg: DetectorConfig) -> str:
    """A session many times longer than the agent's median that is going in circles
    (few distinct calls) or failing: long *and* healthy sessions are left alone."""
    return f"""
    WITH s AS (
      SELECT akey, skey, count(*) AS n, count(DISTINCT sig) AS distinct_calls,
             avg(failed::INT) AS failure_rate, min(ts) AS t0, max(ts) AS t1,
             bool_or(in_window) AS w, {_WHO}
      FROM calls GROUP BY akey, skey
    ), base AS (
      SELECT akey, median(n) AS med FROM s GROUP BY akey
    ), long AS (
      SELECT s.*, b.med FROM s JOIN base b USING (akey)
      WHERE s.w AND s.n >= greatest({cfg.long_session_min_calls}, {cfg.long_session_factor} * b.med)
        AND (s.distinct_calls <= {cfg.long_session_max_novelty} * s.n
             OR s.failure_rate >= {cfg.long_session_min_failure})
    ), spans AS (
      SELECT c.skey, list(c.span_id ORDER BY c.ts)[1:{cfg.max_span_ids}] AS spans
      FROM calls c SEMI JOIN long l ON l.skey = c.skey GROUP BY c.skey
    )
    SELECT 'runaway', 'long_session',
           CASE WHEN n >= {4 * cfg.long_session_factor} * med THEN 'high' ELSE 'medium' END,
           {_OUT}, t0, t1, spans, n,
           format('{{}} calls over {{}} min, {{}}x this agent''s median session ({{}} calls), but only {{}} distinct calls and {{}}% failed',
                  n, CAST(round((epoch(t1) - epoch(t0)) / 60) AS BIGINT), round(n / med, 1), med,
                  distinct_calls, CAST(round(100 * failure_rate) AS BIGINT))
    FROM long JOIN spans USING (skey)
    """


def repeated_side_effect_sql(cfg: DetectorConfig) -> str:
    """The same side effect (a charge, a message, an issue) issued again within a session."""
    return f"""
    WITH r AS (
      SELECT skey, sig, count(*) AS n, min(ts) AS t0, max(ts) AS t1,
             list(span_id ORDER BY ts, span_id) AS spans, any_value(tool) AS tool,
             sum((decision = 'deny')::INT) AS denied, {_WHO}
      FROM calls WHERE is_side_effect
      GROUP BY skey, sig
      HAVING count(*) >= {cfg.side_effect_repeats} AND bool_or(in_window)
    )
    SELECT 'runaway', 'repeated_side_effect',
           CASE WHEN n >= {2 * cfg.side_effect_repeats} THEN 'high' ELSE 'medium' END,
           {_OUT}, t0, t1, spans, n,
           format('the same {{}} call (identical arguments) was issued {{}} times in one session ({{}} denied by policy)',
                  tool, n, denied)
    FROM r
    """


def runaway_sql(cfg: DetectorConfig) -> tuple[str, ...]:
    return (
        identical_loop_sql(cfg),
        ping_pong_sql(cfg),
        retry_storm_sql(cfg),
        rate_spike_sql(cfg),
        long_session_sql(cfg),
        repeated_side_effect_sql(cfg),
    )
