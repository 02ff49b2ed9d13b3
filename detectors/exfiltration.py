"""Data exfiltration: toxic flows from private data or untrusted content to the outside.

Each pattern is one DuckDB query over ``calls`` and ``egress`` (see calls.py):

- ``private_data_to_new_destination``: a read of private data, then an outbound call to a
  destination this agent has never used (the "lethal trifecta" of private data, untrusted
  content and external communication; critical when untrusted content was also read).
- ``secret_in_egress``: outbound arguments carrying a redaction marker ``[REDACTED:kind]``
  (the trail stores arguments redacted) or a long high-entropy base64/hex blob.
- ``bulk_read_then_large_send``: many distinct reads, then one send far larger than the
  agent's usual outbound call (its median, which a few outliers cannot move).
- ``send_then_delete``: an outbound call followed by deleting what was sent or staged.
- ``injection_then_send``: a tool result that reads as instructions to the model
  (recorded excerpt), then an outbound call in the same session.
"""

from __future__ import annotations

from callward.detectors.config import DetectorConfig

_WHO = (
    "any_value(agent_id) AS agent_id, any_value(session_id) AS session_id, "
    "any_value(trace_id) AS trace_id, any_value(service) AS service"
)
_OUT = "agent_id, session_id, trace_id, service"


def private_to_new_destination_sql(cfg: DetectorConfig) -> str:
    return f"""
    WITH priv AS (
      SELECT skey, min(ts) AS t_priv, arg_min(span_id, ts) AS first_private,
             list(DISTINCT tool) AS tools, count(*) AS reads
      FROM calls WHERE is_private GROUP BY skey
    ), untr AS (
      SELECT skey, min(ts) AS t_untr FROM calls WHERE is_untrusted GROUP BY skey
    ), sends AS (
      SELECT e.*, p.t_priv, p.first_private, p.tools, p.reads, u.t_untr
      FROM egress e JOIN priv p USING (skey) LEFT JOIN untr u USING (skey)
      WHERE e.is_new AND e.ts > p.t_priv
    )
    SELECT 'exfiltration', 'private_data_to_new_destination',
           CASE WHEN bool_or(t_untr IS NOT NULL AND t_untr < ts) THEN 'critical' ELSE 'high' END,
           {_WHO}, min(t_priv), max(ts),
           list_concat([any_value(first_private)], list(span_id ORDER BY ts)), count(*) + 1,
           format('{{}} private read(s) ({{}}), then {{}} outbound call(s) to {{}} never used by this agent before{{}}',
                  any_value(reads), array_to_string(any_value(tools), ', '),
                  count(*), array_to_string(list(DISTINCT destination), ', '),
                  CASE WHEN bool_or(t_untr IS NOT NULL AND t_untr < ts)
                       THEN ' after reading untrusted content (lethal trifecta)' ELSE '' END)
    FROM sends GROUP BY skey HAVING bool_or(in_window)
    """


def secret_in_egress_sql(cfg: DetectorConfig) -> str:
    n = cfg.blob_min_chars
    return f"""
    WITH cand AS (
      SELECT *, regexp_extract_all(kept_arguments, '\\[REDACTED:([a-z0-9_]+)\\]', 1) AS markers,
             regexp_extract_all(kept_arguments, '[A-Za-z0-9+/_-]{{{n},}}={{0,2}}') AS blobs
      FROM calls
      WHERE (is_egress OR is_untrusted)
        AND (strpos(kept_arguments, '[REDACTED:') > 0
             OR regexp_matches(kept_arguments, '[A-Za-z0-9+/_-]{{{n},}}'))
    ), blob AS (
      -- entropy is measured on the first 4 KiB of a blob: enough to tell random from text,
      -- and a megabyte-long argument cannot make the query quadratic
      SELECT span_id, row_number() OVER () AS bid, strlen(b) AS blen, left(b, 4096) AS b
      FROM (SELECT span_id, unnest(blobs) AS b FROM cand)
    ), chars AS (
      SELECT bid, unnest(string_split(b, '')) AS ch FROM blob
    ), freq AS (
      SELECT bid, ch, count(*) AS c FROM chars GROUP BY bid, ch
    ), bits AS (
      SELECT bid, -sum(c / total * log2(c / total)) AS bits
      FROM (SELECT bid, c, sum(c) OVER (PARTITION BY bid) AS total FROM freq) GROUP BY bid
    ), entropy AS (
      SELECT blob.span_id, blob.b, blob.blen, bits.bits FROM blob JOIN bits USING (bid)
    ), random_blobs AS (
      SELECT span_id, count(*) AS n_blobs, max(blen) AS longest FROM entropy
      WHERE (regexp_full_match(b, '[0-9a-fA-F]+') AND bits >= {cfg.blob_min_entropy_hex})
         OR (regexp_matches(b, '[A-Z]') AND regexp_matches(b, '[a-z]')
             AND regexp_matches(b, '[0-9]') AND bits >= {cfg.blob_min_entropy_base64})
      GROUP BY span_id
    ), hits AS (
      SELECT c.*, coalesce(r.n_blobs, 0) AS n_blobs, coalesce(r.longest, 0) AS longest,
             coalesce(c.destination, 'tool:' || c.tool) AS dest
      FROM cand c LEFT JOIN random_blobs r USING (span_id)
      WHERE len(c.markers) > 0 OR r.n_blobs IS NOT NULL
    )
    SELECT 'exfiltration', 'secret_in_egress',
           CASE WHEN bool_or(len(markers) > 0) THEN 'critical' ELSE 'high' END,
           {_WHO}, min(ts), max(ts), list(span_id ORDER BY ts), count(*),
           format('outbound call(s) to {{}} carried {{}}{{}}',
                  array_to_string(list(DISTINCT dest), ', '),
                  CASE WHEN sum(len(markers)) > 0
                       THEN 'redacted secrets (' || array_to_string(list_distinct(flatten(list(markers))), ', ') || ')'
                       ELSE '' END,
                  CASE WHEN sum(n_blobs) > 0
                       THEN (CASE WHEN sum(len(markers)) > 0 THEN ' and ' ELSE '' END)
                            || sum(n_blobs) || ' high-entropy blob(s), longest ' || max(longest) || ' chars'
                       ELSE '' END)
    FROM hits GROUP BY skey HAVING bool_or(in_window)
    """


def bulk_read_then_large_send_sql(cfg: DetectorConfig) -> str:
    return f"""
    WITH usual AS (
      SELECT akey, median(alen) AS p50 FROM egress GROUP BY akey
    ), large AS (
      SELECT e.*, u.p50 FROM egress e JOIN usual u USING (akey)
      WHERE e.alen >= greatest({cfg.large_send_bytes}, {cfg.large_send_factor} * u.p50)
    ), before AS (
      SELECT l.span_id, count(*) AS reads, count(DISTINCT c.sig) AS distinct_reads,
             min(c.ts) AS t_first_read
      FROM large l JOIN calls c ON c.skey = l.skey AND c.ts < l.ts AND c.is_read
      GROUP BY l.span_id
    ), hits AS (
      SELECT l.*, b.reads, b.distinct_reads, b.t_first_read
      FROM large l JOIN before b USING (span_id) WHERE b.distinct_reads >= {cfg.bulk_reads}
    )
    SELECT 'exfiltration', 'bulk_read_then_large_send',
           CASE WHEN bool_or(is_new) THEN 'high' ELSE 'medium' END,
           {_WHO}, min(t_first_read), max(ts), list(span_id ORDER BY ts), count(*),
           format('{{}} reads ({{}} distinct), then an outbound call of {{}} bytes to {{}}; this agent''s outbound calls are usually around {{}} bytes (median){{}}',
                  max(reads), max(distinct_reads), max(alen), array_to_string(list(DISTINCT destination), ', '),
                  CAST(round(any_value(p50)) AS BIGINT),
                  CASE WHEN bool_or(is_new) THEN '; the destination is new to this agent' ELSE '' END)
    FROM hits GROUP BY skey HAVING bool_or(in_window)
    """


def send_then_delete_sql(cfg: DetectorConfig) -> str:
    return f"""
    WITH d AS (
      SELECT skey, ts, span_id, tool, in_window AS d_w,
             regexp_extract(kept_arguments,
               '"(?:path|file|filename|file_path|name|id|message_id|ts|key|gist_id)"\\s*:\\s*"([^"]+)"', 1)
               AS target
      FROM calls WHERE is_destructive
    ), pairs AS (
      SELECT e.skey, e.ts AS t_send, e.span_id AS send_span, e.destination, e.is_new,
             d.ts AS t_delete, d.span_id AS delete_span, d.tool AS delete_tool, d.target,
             e.agent_id, e.session_id, e.trace_id, e.service, e.in_window OR d.d_w AS w
      FROM egress e JOIN d ON d.skey = e.skey AND d.ts > e.ts
      WHERE (strlen(d.target) >= 3 AND strpos(e.kept_arguments, d.target) > 0) OR e.is_new
    )
    SELECT 'exfiltration', 'send_then_delete', 'high',
           {_WHO}, min(t_send), max(t_delete),
           list_distinct(list_concat(list(send_span), list(delete_span))), count(DISTINCT delete_span) + count(DISTINCT send_span),
           format('outbound call to {{}} followed by {{}} of {{}}: the sent or staged data was removed afterwards',
                  array_to_string(list(DISTINCT destination), ', '), any_value(delete_tool),
                  array_to_string(list(DISTINCT target), ', '))
    FROM pairs GROUP BY skey HAVING bool_or(w)
    """


def injection_then_send_sql(cfg: DetectorConfig) -> str:
    return f"""
    WITH inj AS (
      SELECT skey, min(ts) AS t_inj, arg_min(span_id, ts) AS inj_span, arg_min(tool, ts) AS inj_tool
      FROM calls WHERE is_injected GROUP BY skey
    ), priv AS (
      SELECT skey, min(ts) AS t_priv FROM calls WHERE is_private GROUP BY skey
    ), sends AS (
      SELECT e.*, i.t_inj, i.inj_span, i.inj_tool, p.t_priv
      FROM egress e JOIN inj i USING (skey) LEFT JOIN priv p USING (skey)
      WHERE e.ts > i.t_inj
    )
    SELECT 'exfiltration', 'injection_then_send',
           CASE WHEN bool_or(t_priv > t_inj AND t_priv < ts) OR bool_or(is_new) THEN 'critical' ELSE 'high' END,
           {_WHO}, min(t_inj), max(ts), list_concat([any_value(inj_span)], list(span_id ORDER BY ts)),
           count(*) + 1,
           format('the result of {{}} contained instructions aimed at the model; {{}} outbound call(s) to {{}} followed{{}}',
                  any_value(inj_tool), count(*), array_to_string(list(DISTINCT destination), ', '),
                  CASE WHEN bool_or(t_priv > t_inj AND t_priv < ts) THEN ', after a read of private data' ELSE '' END)
    FROM sends GROUP BY skey HAVING bool_or(in_window)
    """


def exfiltration_sql(cfg: DetectorConfig) -> tuple[str, ...]:
    return (
        private_to_new_destination_sql(cfg),
        secret_in_egress_sql(cfg),
        bulk_read_then_large_send_sql(cfg),
        send_then_delete_sql(cfg),
        injection_then_send_sql(cfg),
    )
