"""Evaluation: online metrics on labelled production traffic, drift against the training
reference, and the HTML report.

    from kiln.evaluate import evaluate_traffic, version_infos
    from kiln.traffic import Window

    report = evaluate_traffic(home, "digits", Window.last("24h"), version_infos(registry, "digits"))
    report.accuracy, report.drift.versions[0].inputs.drifted, report.to_dict()  # JSON-ready
"""

from __future__ import annotations

from kiln.evaluate.drift import DriftThresholds
from kiln.evaluate.online import VersionInfo, evaluate_traffic, expected_calibration_error
from kiln.evaluate.references import version_infos
from kiln.evaluate.report import render_html, write_report
from kiln.evaluate.results import DriftReport, Evaluation, VersionDrift, VersionMetrics

__all__ = [
    "DriftReport",
    "DriftThresholds",
    "Evaluation",
    "VersionDrift",
    "VersionInfo",
    "VersionMetrics",
    "evaluate_traffic",
    "expected_calibration_error",
    "render_html",
    "version_infos",
    "write_report",
]
