"""callward collector: receive OTLP -> decode -> spool -> write Parquet. The only writer of the store."""
