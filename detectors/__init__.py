"""Runaway-agent and data-exfiltration findings over the tool-call store.

``detect(data_dir_or_connection, since=None, until=None)`` is the one entry point; the
CLI and the dashboard both use it.
"""

from callward.detectors.config import DetectorConfig
from callward.detectors.findings import KINDS, DetectionReport, Finding, detect, detect_report

__all__ = ["KINDS", "DetectionReport", "DetectorConfig", "Finding", "detect", "detect_report"]
