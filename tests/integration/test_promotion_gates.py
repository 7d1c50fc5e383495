"""`kiln promote` with the evaluation gates, on real models, engines, data and Parquet traffic.

One module-scoped registry holds (trained once, a few seconds on CPU):

- digits:1  mlp, 2 epochs, compiled: production;
- digits:2  the same split, 1 epoch at a tiny learning rate, compiled: clearly worse;
- digits:3  digits:1's checkpoint, never compiled: no engine;
- digits:4  digits:1's checkpoint and engine file, registered with a failed parity report;
- digits:5  digits:1's checkpoint and engine, parity passed: a twin that is no worse.

Each test works on its own copy of that KILN_HOME.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln.registry
from kiln.compile import CompileOptions, compile_version
from kiln.data import load_dataset
from kiln.evaluate.labelled import holdout_mask
from kiln.registry import ArtifactKind, Lineage, Registry
from kiln.registry.loader import open_engine
from kiln.settings import Settings
from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord
from kiln.train import TrainConfig, register_result, train
from kiln_engines import EngineOptions
from tests.registry_copy import copy_registry

pytestmark = pytest.mark.both_registries


def _register(
    registry: Registry, settings: Settings, config: TrainConfig, *, compiled: bool
) -> int:
    result = train(config, settings, show_progress=False)
    version = register_result(registry, "digits", result)
    if compiled:
        compile_version(
            registry, version.ref, CompileOptions(measure_seconds=0.0, parity_samples=64), settings
        )
    return version.version


def _twin(
    registry: Registry,
    *,
    parity_passed: bool | None,
    retrain: dict[str, Any] | None = None,
    parent: int | None = None,
) -> int:
    """A new version with digits:1's checkpoint (and its engine, unless `parity_passed` is
    None), the engine's parity report saying `parity_passed`; `retrain` and `parent` make it
    look retrained (its config's record, its lineage's parent)."""
    original = registry.get_version("digits", 1)
    checkpoint = registry.artifact_file(registry.checkpoint("digits", 1))
    lineage = original.lineage or Lineage(dataset="digits")
    twin = registry.register_version(
        "digits",
        checkpoint=checkpoint,
        config=original.config | ({"retrain": retrain} if retrain else {}),
        metrics=original.metrics,
        lineage=dataclasses.replace(lineage, parent_version=parent),
    )
    if parity_passed is not None:
        (engine,) = registry.artifacts("digits", 1, ArtifactKind.ONNXRUNTIME)
        report = dict(engine.report)
        report["parity"] = {**(report.get("parity") or {}), "passed": parity_passed}
        registry.add_artifact(
            "digits",
            twin.version,
            kind=engine.kind,
            path=registry.artifact_file(engine),
            target=engine.target,
            libraries=engine.libraries,
            report=report,
        )
    return twin.version


@pytest.fixture(scope="module")
def source_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("gates") / "kiln-home"
    settings = Settings(home=home)
    with kiln.registry.open(settings=settings) as registry:
        good = TrainConfig(dataset="digits", model="mlp", epochs=2, seed=0)
        assert _register(registry, settings, good, compiled=True) == 1
        worse = TrainConfig(dataset="digits", model="mlp", epochs=1, seed=0, lr=3e-5)
        assert _register(registry, settings, worse, compiled=True) == 2
        assert _twin(registry, parity_passed=None) == 3
        assert _twin(registry, parity_passed=False) == 4
        assert _twin(registry, parity_passed=True) == 5
        registry.promote("digits:1", gates=[])
    return home


@pytest.fixture
def home(source_home: Path, kiln_home: Path, registry_url: str | None) -> Path:
    shutil.copytree(source_home, kiln_home)
    if registry_url is not None:  # the same registry, on this test's PostgreSQL database
        copy_registry(f"sqlite:///{source_home}/registry.db", registry_url)
        for stale in kiln_home.glob("registry.db*"):
            stale.unlink()
    return kiln_home


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    with kiln.registry.open(settings=Settings(home=home)) as opened:
        yield opened


def gates_of(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["gate"]: g for g in payload["gates"]}


def test_a_worse_candidate_is_refused_with_the_numbers(cli: Any, registry: Registry) -> None:
    refused = cli("promote", "digits:2", "--json")
    assert refused.exit_code == 2, refused.stderr
    payload = refused.json()
    assert payload["promoted"] is False
    gates = gates_of(payload)
    assert list(gates) == [
        "test_accuracy-not-worse",
        "parity-passed",
        "held-out-regression",
        "traffic-gain",
        "latency-budget",
    ]
    held_out = gates["held-out-regression"]
    numbers = held_out["numbers"]
    assert held_out["passed"] is False
    assert numbers["current"] > 0.8 and numbers["candidate"] < 0.5
    assert numbers["drop"] == pytest.approx(numbers["current"] - numbers["candidate"])
    assert numbers["limit"] == 0.01
    assert gates["parity-passed"]["passed"] is True
    # No traffic here: no gain can be measured, and none is required by default.
    assert gates["traffic-gain"]["passed"] is True
    assert gates["traffic-gain"]["numbers"]["samples"] == 0
    error = " ".join(refused.stderr.split())
    assert "promotion of digits:2 to digits@production refused" in error
    assert "held-out accuracy (" in error and f"{numbers['current']:.4f}" in error
    assert "use --force" in error
    assert registry.resolve("digits").version == 1
    assert len(registry.history("digits")) == 1

    table = cli("promote", "digits:2")
    assert table.exit_code == 2
    shown = " ".join(table.stdout.split())
    assert "held-out-regression" in shown and "FAIL" in shown


def test_force_moves_it_and_records_the_override(cli: Any, registry: Registry) -> None:
    forced = cli("promote", "digits:2", "--force", "--reason", "we know", "--json")
    assert forced.exit_code == 0, forced.stderr
    payload = forced.json()
    assert (payload["to_version"], payload["forced"]) == (2, True)
    assert payload["gate"]["forced"] is True
    move = registry.history("digits")[-1]
    assert (move.to_version, move.forced, move.reason) == (2, True, "we know")
    assert move.gate is not None
    recorded = {r.gate: r for r in move.gate.results}
    assert recorded["held-out-regression"].passed is False
    assert recorded["held-out-regression"].numbers["candidate"] is not None
    assert len(recorded) == 5
    assert registry.resolve("digits").version == 2


def test_a_candidate_without_a_verified_engine_fails_parity(cli: Any, registry: Registry) -> None:
    no_engine = gates_of(cli("promote", "digits:3", "--json").json())["parity-passed"]
    assert no_engine["passed"] is False
    assert "digits:3 has no engine to serve here" in no_engine["message"]
    assert "kiln compile digits:3" in no_engine["message"]

    unverified = cli("promote", "digits:4", "--json")
    assert unverified.exit_code == 2
    gates = gates_of(unverified.json())
    assert gates["parity-passed"]["passed"] is False
    assert (
        "onnxruntime engine of digits:4 has no passed parity check"
        in (gates["parity-passed"]["message"])
    )
    # The same weights as production: only parity stands in the way.
    assert [name for name, g in gates.items() if not g["passed"]] == ["parity-passed"]
    assert gates["held-out-regression"]["numbers"]["drop"] == 0
    assert registry.resolve("digits").version == 1


def test_a_candidate_no_worse_passes_and_the_decision_is_stored(
    cli: Any, registry: Registry
) -> None:
    moved = cli("promote", "digits:5", "--json")
    assert moved.exit_code == 0, moved.stderr
    move = registry.history("digits")[-1]
    assert move.to_version == 5 and not move.forced
    assert move.gate is not None and move.gate.passed and len(move.gate.results) == 5


def test_no_eval_gates_runs_only_the_recorded_metric_gate(cli: Any, registry: Registry) -> None:
    refused = cli("promote", "digits:3", "--no-eval-gates", "--json")
    assert refused.exit_code == 0, refused.stderr  # same recorded accuracy: passes
    assert [r["gate"] for r in refused.json()["gate"]["results"]] == ["test_accuracy-not-worse"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--latency-budget", "0"), "latency budget is a factor"),
        (("--max-regression", "2"), "max-heldout-regression is an accuracy difference"),
        (("--since", "yesterday-ish"), "yesterday-ish"),
    ],
)
def test_bad_thresholds_exit_2(
    cli: Any, registry: Registry, args: tuple[str, ...], message: str
) -> None:
    result = cli("promote", "digits:5", *args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert message in " ".join(result.stderr.split())
    assert registry.resolve("digits").version == 1


def _log_labelled_traffic(
    home: Path, settings: Settings
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Log distinct digits inputs as answered requests with feedback; rows outside the held-out
    slice get wrong labels, so a gate reading them would score far lower. Returns the request
    ids, inputs and true labels."""
    data = load_dataset("digits", settings, seed=0)
    x = np.concatenate([data.val.x, data.test.x]).astype(np.float32)
    y = np.concatenate([data.val.y, data.test.y])
    _, first = np.unique(x.reshape(len(x), -1), axis=0, return_index=True)
    keep = np.sort(first)
    x, y = x[keep], y[keep]
    ids = [f"req-{i:04d}" for i in range(len(x))]
    held = holdout_mask(ids)
    labels = np.where(held, y, (y + 1) % 10)
    now_us = time.time_ns() // 1000
    logger = TrafficLogger(home)
    for i, request_id in enumerate(ids):
        logger.log(
            TrafficRecord(
                request_id, now_us - 1000 * (len(ids) - i), "digits", 1, 150,
                input=x[i : i + 1], output=np.eye(10, dtype=np.float32)[y[i : i + 1]],
            )
        )  # fmt: skip
    assert logger.close(timeout=60)
    feedback = FeedbackWriter(home)
    for request_id, label in zip(ids, labels, strict=True):
        feedback.add(request_id, int(label), model="digits")
    assert feedback.close(timeout=60)
    return ids, x, y


def _accuracy_on(registry: Registry, version: int, x: np.ndarray, y: np.ndarray) -> float:
    engine, _ = open_engine(registry, "digits", version, EngineOptions(intra_op_threads=1))
    with engine:
        name = engine.signature.inputs[0].name
        output = engine.signature.outputs[0].name
        predicted = np.concatenate(
            [
                engine.infer({name: x[i : i + 32]})[output].argmax(axis=1)
                for i in range(0, len(x), 32)
            ]
        )
    return float((predicted == y).mean())


def test_traffic_gain_is_measured_on_the_held_out_slice(
    cli: Any, registry: Registry, home: Path
) -> None:
    settings = Settings(home=home)
    ids, x, labels = _log_labelled_traffic(home, settings)
    held = holdout_mask(ids)
    assert 20 <= held.sum() < len(ids)
    y = labels[held]

    refused = cli("promote", "digits:2", "--json", "--max-regression", "1", "--tolerance", "1")
    assert refused.exit_code == 2, refused.stderr
    traffic = gates_of(refused.json())["traffic-gain"]
    numbers = traffic["numbers"]
    assert traffic["passed"] is False
    assert numbers["samples"] == int(held.sum())
    assert numbers["current"] == pytest.approx(_accuracy_on(registry, 1, x[held], y))
    assert numbers["candidate"] == pytest.approx(_accuracy_on(registry, 2, x[held], y))
    assert numbers["current"] > 0.8  # the wrongly labelled training slice was not read
    assert numbers["gain"] == pytest.approx(numbers["candidate"] - numbers["current"])
    assert f"accuracy on {int(held.sum())} held-out labelled requests" in traffic["message"]

    # The twin gains nothing; requiring a gain refuses it, and says by how much it missed.
    twin = gates_of(cli("promote", "digits:5", "--min-traffic-gain", "0.02", "--json").json())
    assert twin["traffic-gain"]["passed"] is False
    assert twin["traffic-gain"]["numbers"]["gain"] == 0


def test_held_out_numbers_say_whether_a_version_may_have_learned_them(
    cli: Any, registry: Registry, home: Path
) -> None:
    """Retraining records how many requests it left out as equal to held-out samples; a
    version retrained without that record (before the rule) may have learned some, and the
    held-out gate says so instead of presenting its number as held out."""
    test_samples = len(load_dataset("digits", Settings(home=home)).test)
    clean = _twin(registry, parity_passed=True, retrain={"excluded_heldout": 12}, parent=1)
    before_rule = _twin(registry, parity_passed=True, retrain={"trained_on": 90}, parent=1)
    warm = _twin(
        registry, parity_passed=True,
        retrain={"excluded_heldout": 0, "warm_start": True}, parent=before_rule,
    )  # fmt: skip

    def held_out(version: int) -> dict[str, Any]:
        result = cli("promote", f"digits:{version}", "--json")
        assert result.exit_code == 0, result.stderr  # the same weights: every gate passes
        results = result.json()["gate"]["results"]
        return next(g for g in results if g["gate"] == "held-out-regression")

    untouched = held_out(clean)
    assert untouched["numbers"]["samples"] == test_samples
    assert f"({test_samples} test samples, none of them trained on)" in untouched["message"]
    assert "note" not in untouched["message"]

    learned = held_out(before_rule)["message"]
    assert "none of them trained on" not in learned
    assert (
        f"note: digits:{before_rule} was retrained before retraining left out requests equal "
        "to held-out samples, so it may have learned some of these samples"
    ) in learned

    # Warm-started from it: it carries those weights; and production is now that version.
    inherited = held_out(warm)["message"]
    assert f"note: digits:{before_rule} (digits:{warm} starts from it) was retrained" in inherited
    assert f"note: digits:{before_rule} was retrained before" in inherited
