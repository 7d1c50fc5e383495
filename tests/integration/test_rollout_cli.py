"""`kiln rollout` and the rollout in `kiln models show`, through the real entry point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import kiln.registry
from kiln.settings import Settings

pytestmark = pytest.mark.both_registries


@pytest.fixture
def seeded(settings: Settings, tmp_path: Path) -> Settings:
    """digits:1 in production and digits:2, both with a (stand-in) engine; no candidate yet."""
    with kiln.registry.open(settings=settings) as registry:
        for i in (1, 2):
            files = tmp_path / str(i)
            files.mkdir()
            (files / "model.safetensors").write_bytes(os.urandom(64))
            (files / "model.onnx").write_bytes(os.urandom(64))
            version = registry.register_version(
                "digits",
                checkpoint=files / "model.safetensors",
                config={},
                metrics={"test_accuracy": 0.9},
            )
            registry.add_artifact(
                "digits", version.version, kind="onnxruntime", path=files / "model.onnx"
            )
        registry.promote("digits:1", gates=[])
    return settings


def error_of(result: Any) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


def history_length(settings: Settings) -> int:
    with kiln.registry.open(settings=settings) as registry:
        return len(registry.rollout_history("digits"))


def test_a_model_without_a_candidate_is_refused(cli: Any, seeded: Settings) -> None:
    message = error_of(cli("rollout", "digits", "--canary", "10"))
    assert (
        "digits has no candidate version; run kiln retrain digits or "
        "kiln promote digits:N --alias candidate" in message
    )
    assert history_length(seeded) == 0
    assert cli("rollout", "digits", "--json").json()["rollout"]["mode"] == "off"


def test_canary_shadow_off_and_show(cli: Any, seeded: Settings) -> None:
    assert cli("promote", "digits:2", "--alias", "candidate", "--no-eval-gates").exit_code == 0

    canary = cli("rollout", "digits", "--canary", "10", "--reason", "first look", "--json")
    assert canary.exit_code == 0, canary.stderr
    payload = canary.json()
    assert payload["rollout"] | {"actor": None, "updated_at": None} == {
        "name": "digits",
        "mode": "canary",
        "percent": 10.0,
        "alias": "candidate",
        "version": 2,
        "actor": None,
        "reason": "first look",
        "updated_at": None,
    }
    assert (payload["previous"]["mode"], payload["production_version"]) == ("off", 1)

    shown = cli("models", "show", "digits", "--json").json()
    assert (shown["rollout"]["mode"], shown["rollout"]["version"]) == ("canary", 2)
    people = cli("models", "show", "digits")
    assert "rollout: canary: 10% of requests answered by digits@candidate" in " ".join(
        people.stdout.split()
    )

    shadow = cli("rollout", "digits", "--shadow", "--percent", "30")
    text = " ".join(shadow.stdout.split())
    assert shadow.exit_code == 0 and "shadow: 30% of requests copied to digits@candidate" in text
    assert "was: canary: 10%" in text
    assert cli("rollout", "digits", "--shadow", "--json").json()["rollout"]["percent"] == 100.0

    off = cli("rollout", "digits", "--off", "--reason", "seen enough", "--json").json()
    assert (off["rollout"]["mode"], off["changed"]) == ("off", True)
    again = cli("rollout", "digits", "--off")
    assert again.exit_code == 0 and "no rollout was running" in again.stdout

    status = cli("rollout", "digits", "--json").json()
    assert [(c["mode"], c["percent"]) for c in status["history"]] == [
        ("canary", 10.0),
        ("shadow", 30.0),
        ("shadow", 100.0),
        ("off", 0.0),
    ]
    assert status["history"][-1]["reason"] == "seen enough"
    table = cli("rollout", "digits")
    assert table.exit_code == 0 and "digits rollout history" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--canary", "10", "--off"), "--canary and --off exclude each other"),
        (("--shadow", "--off"), "--shadow and --off exclude each other"),
        (("--canary", "10", "--percent", "5"), "--percent goes with --shadow"),
        (("--canary", "0"), "percent must be in (0, 100], got 0"),
        (("--canary", "150"), "got 150"),
        (("--shadow", "--percent", "-1"), "got -1"),
        (("--canary", "10", "--alias", "staging"), "digits has no staging version"),
        (("--canary", "10", "--alias", "production"), "both point at digits:1"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    cli: Any, seeded: Settings, args: tuple[str, ...], message: str
) -> None:
    assert cli("promote", "digits:2", "--alias", "candidate", "--no-eval-gates").exit_code == 0
    assert message in error_of(cli("rollout", "digits", *args))
    assert history_length(seeded) == 0


def test_an_unknown_model_gets_a_suggestion(cli: Any, seeded: Settings) -> None:
    message = error_of(cli("rollout", "digit", "--canary", "10"))
    assert "no model 'digit'; did you mean 'digits'?" in message


def test_promoting_the_canary_says_the_rollout_is_moot(cli: Any, seeded: Settings) -> None:
    assert cli("promote", "digits:2", "--alias", "candidate", "--no-eval-gates").exit_code == 0
    assert cli("rollout", "digits", "--canary", "50").exit_code == 0
    promoted = cli("promote", "digits:2", "--no-eval-gates")
    assert promoted.exit_code == 0, promoted.stderr
    assert "now runs digits:2 beside itself; end it with kiln rollout digits --off" in " ".join(
        promoted.stderr.split()
    )
    state = cli("rollout", "digits", "--json").json()
    assert (state["rollout"]["version"], state["production_version"]) == (2, 2)
