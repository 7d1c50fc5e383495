"""A text version's drift in words (`kiln evaluate`) and on the HTML report: the length
histograms side by side, the unknown-token rate, and the tokens whose share moved most."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from kiln.evaluate.drift import DriftThresholds
from kiln.evaluate.page import fmt, image, png, table
from kiln.evaluate.text_drift import TextDrift

TOKEN_TABLE_ROWS = 15
"""Tokens listed on the page, largest PSI term first (the JSON has `TOKEN_ROWS`)."""


def _moved(flag: bool) -> str:
    return "moved" if flag else "stable"


def text_drift_lines(text: TextDrift) -> list[str]:
    """What `kiln evaluate` prints about a text version's texts, a line per statistic."""
    if not text.judged:
        return [f"texts: {text.note}"]
    lines = [f"texts ({text.samples} logged): moved {', '.join(text.drifted) or 'none'}"]
    if text.length is not None:
        length = text.length
        lines.append(
            f"length: PSI {length.psi:.3f}, KS {length.ks_statistic:.3f} "
            f"(p {length.ks_pvalue:.2g}), mean {fmt(length.current_mean, 1)} tokens vs "
            f"{fmt(length.reference_mean, 1)} at training ({_moved(length.drift)})"
        )
    if text.unknown is not None:
        unknown = text.unknown
        lines.append(
            f"unknown tokens: rate {unknown.current_rate:.4f} vs {unknown.reference_rate:.4f} "
            f"at training, change {unknown.change:+.4f} ({_moved(unknown.drift)})"
        )
    if text.tokens is not None:
        tokens = text.tokens
        moved = ", ".join(repr(name) for name in tokens.moved[:8]) or "none"
        lines.append(
            f"token frequencies ({tokens.tokens} tokens of {tokens.texts} texts): PSI "
            f"{tokens.psi:.3f}, 'other' share {tokens.current_other:.3f} vs "
            f"{tokens.reference_other:.3f} ({_moved(tokens.drift)}); moved most: {moved}"
        )
    elif text.note:
        lines.append(text.note)
    return lines


def _histogram_plot(text: TextDrift, version: int) -> str:
    histogram = text.length_histogram or {}
    edges = [float(e) for e in histogram.get("edges", [])]
    labels = [f"<={e:g}" for e in edges] + [f">{edges[-1]:g}" if edges else "all"]

    def draw(ax: Any) -> None:
        x = np.arange(len(labels))
        ax.bar(x - 0.2, histogram.get("reference", []), 0.4, label="training", color="#2c7fb8")
        ax.bar(x + 0.2, histogram.get("current", []), 0.4, label="served", color="#e6550d")
        ax.set_xticks(x, labels, rotation=45, fontsize=8)
        ax.set_xlabel("tokens per text")
        ax.set_ylabel("share of texts")
        ax.set_title(f"text length, version {version}")
        ax.legend()

    return png(draw)


def text_sections(text: TextDrift, version: int, t: DriftThresholds) -> list[str]:
    """The HTML of a text version's text drift (its predictions follow, as any classifier's)."""
    if not text.judged:
        return [f"<p>Texts: {html.escape(text.note or '')}</p>"]
    moved = ", ".join(text.drifted) or "none"
    rows: list[list[Any]] = []
    if text.length is not None:
        rows += [
            ["length PSI (decile bins)", text.length.psi, f"> {t.psi} and KS p < {t.ks_alpha}",
             text.length.drift],
            ["length KS", text.length.ks_statistic, f"> {t.ks_statistic} and p < {t.ks_alpha}",
             text.length.drift],
        ]  # fmt: skip
    if text.unknown is not None:
        rows.append(
            ["unknown-token rate change", text.unknown.change,
             f"> +{t.unknown_rate_increase} and z > {t.class_z}", text.unknown.drift]
        )  # fmt: skip
    if text.tokens is not None:
        rows.append(
            ["token-frequency PSI (top tokens + other)", text.tokens.psi, f"> {t.token_psi}",
             text.tokens.drift]
        )  # fmt: skip
    parts = [
        f"<p>{text.samples} logged texts; statistics that moved: <b>{html.escape(moved)}</b>.</p>",
        table(["statistic", "value", "drift when", "drift"], rows, flag=3),
        image(_histogram_plot(text, version), "text length histograms"),
    ]
    if text.length is not None and text.unknown is not None:
        parts.append(
            f"<p>Mean length {fmt(text.length.current_mean, 1)} tokens (training "
            f"{fmt(text.length.reference_mean, 1)}); unknown-token rate "
            f"{fmt(text.unknown.current_rate)} (training {fmt(text.unknown.reference_rate)}).</p>"
        )
    if text.tokens is None:
        return [*parts, f"<p>{html.escape(text.note or '')}</p>"]
    tokens = text.tokens
    parts += [
        f"<p>Token frequencies over {tokens.tokens} tokens of {tokens.texts} texts: the "
        f"training texts' top tokens and 'other' (every other token: share "
        f"{fmt(tokens.current_other, 3)}, training {fmt(tokens.reference_other, 3)}). The "
        f"{TOKEN_TABLE_ROWS} tokens whose share moved most:</p>",
        table(
            ["token", "id", "training share", "served share", "PSI term", "z", "moved"],
            [
                [s.name, s.id, s.reference, s.current, s.contribution, s.z, s.moved]
                for s in tokens.shares[:TOKEN_TABLE_ROWS]
            ],
            flag=6,
        ),
    ]
    return parts
