"""Text drift on real traffic Parquet: a version whose reference was profiled on movie snippets
(rotten-tomatoes' training split, its own trained tokenizer) sees held-out snippets of the
same domain (no drift) or product reviews (fine-foods: drift of length and token frequencies),
through `evaluate_traffic`, `kiln evaluate --json` and the HTML report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln.registry
from kiln.data.catalog import load_dataset
from kiln.evaluate import (
    DriftThresholds,
    Evaluation,
    VersionDrift,
    evaluate_traffic,
    version_infos,
)
from kiln.evaluate.text_drift import text_drift, unknown_drift
from kiln.settings import Settings
from kiln.text import TextTokenizer
from kiln.text.profile import TOP_TOKENS, text_reference
from kiln.traffic import TrafficLogger, TrafficRecord, TrafficSettings, Window

MODEL = "reviews"
CLASSES = ["negative", "positive"]


@dataclass(frozen=True)
class Domains:
    tokenizer: TextTokenizer
    reference: dict[str, Any]
    same: np.ndarray
    """Held-out movie snippets (the reference's domain)."""
    other: np.ndarray
    """Product reviews."""


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Domains:
    settings = Settings(home=tmp_path_factory.mktemp("data-home"))
    movies = load_dataset("rotten-tomatoes", settings)
    foods = load_dataset("fine-foods", settings)
    tokenizer = TextTokenizer.train(movies.train.x, vocab_size=4000, max_length=128)
    scores = np.random.default_rng(0).normal(size=(len(movies.test.x), 2))
    reference = text_reference(movies.train.x, tokenizer, scores, movies.test.y, CLASSES)
    return Domains(tokenizer, reference, movies.test.x[:400], foods.test.x[:400])


def register(home: Path, d: Domains, *, tokenizer: bool = True) -> int:
    config = {"class_names": CLASSES, "reference": d.reference, "text": d.tokenizer.settings(),
              "task": "classification", "input_shape": []}  # fmt: skip
    checkpoint = home.parent / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        version = registry.register_version(MODEL, checkpoint=checkpoint, config=config, metrics={})
        if tokenizer:
            path = d.tokenizer.save(home.parent / "tokenizer.json")
            registry.add_artifact(MODEL, version.version, kind="tokenizer", path=path)
    return version.version


def log_texts(
    home: Path, d: Domains, texts: np.ndarray, *, rate: float = 1.0, tokenised: bool = False
) -> None:
    """One request per text, as the serving hook logs them: the string (by the sample rate)
    and its token counts; or, `tokenised`, the ids as the input and no string."""
    rng = np.random.default_rng(1)
    now = time.time_ns() // 1000 - 1_000_000
    settings = TrafficSettings(flush_interval_s=60, input_sample_rate=rate)
    with TrafficLogger(home, settings) as logger:
        for i, text in enumerate(texts):
            encoded = d.tokenizer.encode([str(text)])
            logger.log(
                TrafficRecord(
                    f"t{i}",
                    now + i,
                    MODEL,
                    1,
                    300,
                    input=encoded.input_ids.astype(np.float32) if tokenised else None,
                    output=rng.normal(size=(1, 2)).astype(np.float32),
                    texts=None if tokenised else np.array([text.encode()], dtype=object),
                    text_tokens=encoded.lengths,
                    text_unknown=encoded.unknown,
                )
            )


def evaluate(home: Path) -> Evaluation:
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        infos = version_infos(registry, MODEL)
    return evaluate_traffic(home, MODEL, Window.last("1h"), infos)


def drift_of(home: Path, d: Domains, texts: np.ndarray, **logging: Any) -> VersionDrift:
    """The drift of reviews:1 (registered with its tokenizer) after `texts` were served."""
    register(home, d)
    log_texts(home, d, texts, **logging)
    (version,) = evaluate(home).drift.versions
    return version


def test_the_reference_profiles_texts_with_the_version_tokenizer(domains: Domains) -> None:
    reference = domains.reference
    assert "inputs" not in reference and reference["class_names"] == CLASSES
    assert reference["predictions"]["samples"] == 1269  # the held-out split's scores
    text = reference["text"]
    assert text["tokenizer_sha256"] == domains.tokenizer.sha256
    assert text["samples"] == 10159 and 15 < text["length"]["mean"] < 40
    tokens = text["tokens"]
    assert len(tokens["ids"]) == TOP_TOKENS == len(tokens["names"])
    assert sum(tokens["shares"]) + tokens["other"] == pytest.approx(1.0, abs=1e-4)
    assert domains.tokenizer.pad_id not in tokens["ids"]  # special tokens are not counted
    assert {"the", "film", "movie"} <= set(tokens["names"])
    assert sum(text["length"]["histogram"]["fractions"]) == pytest.approx(1.0, abs=1e-4)
    again = [
        text_reference(domains.same, domains.tokenizer, np.zeros((3, 2)), None, CLASSES)
        for _ in range(2)
    ]
    assert again[0] == again[1]  # deterministic


def test_same_domain_traffic_shows_no_drift(kiln_home: Path, domains: Domains) -> None:
    version = drift_of(kiln_home, domains, domains.same)
    text = version.text
    assert text is not None and text.judged and text.samples == 400
    assert text.drifted == [] and not version.drift
    assert text.tokens is not None and text.tokens.texts == 400 and text.tokens.psi < 0.1
    assert text.length is not None and text.length.psi < 0.1
    assert version.predictions is not None and not version.predictions.drifted


def test_another_domain_drifts_in_length_and_vocabulary(kiln_home: Path, domains: Domains) -> None:
    version = drift_of(kiln_home, domains, domains.other)
    text = version.text
    assert text is not None and version.drift
    assert {"length", "tokens"} <= set(text.drifted)
    assert (
        text.length is not None and (text.length.current_mean or 0) > 2 * text.length.reference_mean
    )
    assert text.tokens is not None and text.tokens.psi > DriftThresholds().token_psi
    assert {"film", "movie"} <= set(text.tokens.moved)  # product reviews never say them
    assert text.unknown is not None and text.unknown.current_rate > text.unknown.reference_rate
    histogram = text.length_histogram
    assert histogram is not None and len(histogram["current"]) == len(histogram["reference"])


def test_without_logged_texts_length_and_unknowns_are_still_judged(
    kiln_home: Path, domains: Domains
) -> None:
    text = drift_of(kiln_home, domains, domains.other, rate=0.0).text
    assert text is not None and text.tokens is None and "length" in text.drifted
    assert text.note is not None and "no texts were logged" in text.note


def test_pre_tokenised_requests_count_their_ids(kiln_home: Path, domains: Domains) -> None:
    text = drift_of(kiln_home, domains, domains.same[:200], tokenised=True).text
    tokens = text.tokens if text else None
    assert tokens is not None and tokens.texts == 200 and not tokens.drift


def test_a_version_without_its_tokenizer_says_so(kiln_home: Path, domains: Domains) -> None:
    register(kiln_home, domains, tokenizer=False)
    log_texts(kiln_home, domains, domains.same[:150])
    (version,) = evaluate(kiln_home).drift.versions
    text = version.text
    assert text is not None and text.judged and text.tokens is None
    assert text.note is not None and "no tokenizer artifact" in text.note


def test_kiln_evaluate_reports_text_drift(
    kiln_home: Path, domains: Domains, cli: Any, tmp_path: Path
) -> None:
    register(kiln_home, domains)
    log_texts(kiln_home, domains, domains.other[:200])
    page = tmp_path / "report.html"
    result = cli("evaluate", MODEL, "--since", "1h", "--json", "--report", str(page))
    assert result.exit_code == 0, result.stderr
    drift = result.json()["drift"]
    assert result.json()["drift_detected"] is True
    (version,) = drift["versions"]
    assert version["drift"] is True and "inputs" not in version
    text = version["text"]
    assert {"length", "tokens"} <= set(text["drifted"])
    assert (
        text["tokens"]["shares"][0]["contribution"] >= text["tokens"]["shares"][1]["contribution"]
    )
    assert {"token_psi", "unknown_rate_increase"} <= set(drift["thresholds"])
    json.dumps(result.json())
    html = page.read_text()
    assert "text length histograms" in html and "token-frequency PSI" in html and "film" in html
    words = cli("evaluate", MODEL, "--since", "1h")
    assert words.exit_code == 0, words.stderr
    assert "token frequencies (" in words.stdout and "unknown tokens: rate" in words.stdout


def test_too_few_texts_are_not_judged(domains: Domains) -> None:
    reference = domains.reference["text"]
    few = text_drift(np.full(20, 30), np.zeros(20), reference, DriftThresholds())
    assert not few.judged and few.note is not None and "20 logged text(s)" in few.note


def test_the_unknown_rate_flags_a_large_significant_rise(domains: Domains) -> None:
    reference = domains.reference["text"]
    t = DriftThresholds()
    lengths = np.full(500, 20)
    rise = unknown_drift(np.full(500, 2), lengths, reference, t)  # 10% of tokens unknown
    assert rise.drift and rise.change == pytest.approx(0.1, abs=1e-3)
    small = unknown_drift(np.r_[np.ones(10), np.zeros(490)], lengths, reference, t)  # 0.1%
    assert not small.drift
