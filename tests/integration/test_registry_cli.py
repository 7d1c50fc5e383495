"""`kiln models …`, `kiln promote` and `kiln rollback` through the real entry point."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kiln.registry
from kiln.registry import Lineage
from kiln.settings import Settings

pytestmark = pytest.mark.both_registries


@pytest.fixture
def seeded(settings: Settings, tmp_path: Path) -> Settings:
    """A registry holding digits:1-3 (accuracy 0.90, 0.95, 0.80); production -> 1."""
    with kiln.registry.open(settings=settings) as registry:
        for i, accuracy in enumerate((0.90, 0.95, 0.80), start=1):
            ckpt = tmp_path / f"ckpt-{i}.safetensors"
            ckpt.write_bytes(os.urandom(128))
            registry.register_version(
                "digits",
                checkpoint=ckpt,
                config={"arch": "cnn", "seed": i},
                metrics={"test_accuracy": accuracy, "test_loss": 0.2, "ece": 0.01},
                lineage=Lineage(dataset="mnist-5k", run_id=f"run-{i}"),
            )
        registry.promote("digits:1", reason="launch")
    return settings


def error_of(result: Any) -> str:
    """The one-paragraph error, with rich's soft wrapping undone."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


def test_list_show_and_history(cli: Any, seeded: Settings) -> None:
    listed = cli("models", "list", "--json").json()
    assert listed["models"] == [
        {
            "name": "digits",
            "created_at": listed["models"][0]["created_at"],
            "version_count": 3,
            "latest_version": 3,
            "aliases": {"production": 1},
        }
    ]
    shown = cli("models", "show", "digits", "--json").json()
    assert [v["version"] for v in shown["versions"]] == [1, 2, 3]
    assert shown["versions"][0]["aliases"] == ["production"]
    assert shown["versions"][0]["artifacts"][0]["kind"] == "checkpoint"
    assert shown["versions"][1]["metrics"]["test_accuracy"] == 0.95
    newest = cli("models", "show", "digits", "--limit", "1", "--json").json()
    assert [v["version"] for v in newest["versions"]] == [3]
    one = cli("models", "show", "digits:2", "--json").json()
    assert one["ref"] == "digits:2" and one["lineage"]["run_id"] == "run-2"
    human = cli("models", "show", "digits")
    assert human.exit_code == 0 and "digits: 3 versions" in human.stdout
    history = cli("models", "history", "digits", "--json").json()
    assert [(m["from_version"], m["to_version"]) for m in history["moves"]] == [(None, 1)]
    assert history["moves"][0]["reason"] == "launch"
    assert cli("models", "history", "digits").exit_code == 0


def test_promote_gate_force_and_rollback(cli: Any, seeded: Settings) -> None:
    # These versions have no engines: only the recorded-accuracy gate can judge them (the
    # evaluation gates are tested on real models in test_promotion_gates.py).
    moved = cli("promote", "digits:2", "--reason", "retrained", "--no-eval-gates", "--json").json()
    assert (moved["from_version"], moved["to_version"], moved["forced"]) == (1, 2, False)
    assert moved["gate"]["passed"] is True

    refused = cli("promote", "digits:3", "--no-eval-gates")
    message = error_of(refused)
    assert "refused" in message and "0.8000" in message and "0.9500" in message
    assert "use --force to override" in message
    as_json = cli("promote", "digits:3", "--no-eval-gates", "--json")
    assert as_json.exit_code == 2
    payload = as_json.json()  # one object: the gate table and the error together
    assert payload["promoted"] is False and payload["error"]["code"] == "failed_precondition"
    assert "use --force to override" in payload["error"]["message"]

    human = cli("promote", "digits:3", "--force", "--reason", "hotfix", "--no-eval-gates")
    assert human.exit_code == 0, human.stderr
    assert "forced" in human.stdout and "FAIL" in human.stdout
    forced = cli("models", "history", "digits", "--alias", "production", "--json").json()
    last = forced["moves"][-1]
    assert last["forced"] is True and last["gate"]["passed"] is False
    assert last["reason"] == "hotfix"

    lenient = cli(
        "promote", "digits:3", "--alias", "candidate", "--tolerance", "0.5", "--no-eval-gates",
        "--json",
    )  # fmt: skip
    assert lenient.json()["gate"]["passed"] is True

    back = cli("rollback", "digits", "--json").json()
    assert (back["from_version"], back["to_version"], back["action"]) == (3, 2, "rollback")
    served = cli("models", "history", "digits", "--at", back["at"], "--json").json()
    assert served["at"]["version"] == 2


def test_delete_export_import_and_gc(
    cli: Any, seeded: Settings, tmp_path: Path, switch_home: Callable[[Path], None]
) -> None:
    message = error_of(cli("models", "delete", "digits:1"))
    assert "alias 'production' points at it" in message
    assert "kiln rollback digits --alias production" in message
    deleted = cli("models", "delete", "digits:3", "--json").json()
    assert deleted["deleted"]["version"] == 3
    collected = cli("models", "gc", "--json").json()
    assert len(collected["removed_blobs"]) == 1 and collected["kept_blobs"] == 2

    bundle = tmp_path / "digits-1.tar.gz"
    exported = cli("models", "export", "digits@production", str(bundle), "--json").json()
    assert exported["ref"] == "digits:1" and bundle.is_file()

    switch_home(tmp_path / "second-home")
    imported = cli("models", "import", str(bundle), "--json").json()
    assert imported["ref"] == "digits:1" and imported["created"] is True
    assert [a["sha256"] for a in imported["artifacts"]] == [
        a["sha256"] for a in exported["artifacts"]
    ]
    again = cli("models", "import", str(bundle))
    assert again.exit_code == 0 and "already in this registry" in again.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("promote", "digits:x"), ["malformed reference 'digits:x'", "NAME:VERSION"]),
        (("promote", "digits:1@production"), ["not both"]),
        (("models", "show", "digits:0"), ["positive integer"]),
        (("models", "show", "Digits"), ["not a valid model name", "did you mean 'digits'"]),
        (("models", "show", "digit"), ["no model 'digit'; did you mean 'digits'?"]),
        (("promote", "digitz:2"), ["no model 'digitz'; did you mean 'digits'?"]),
        (("promote", "digits:9"), ["no version 9; versions: 1-3", "kiln models show digits"]),
        (("models", "delete", "digits:7"), ["no version 7; versions: 1-3"]),
        (("models", "delete", "digits@production"), ["delete takes NAME:VERSION"]),
        (("models", "show", "digits@canary"), ["no alias 'canary'", "aliases: production"]),
        (("rollback", "digits", "--alias", "candidate"), ["no alias 'candidate'"]),
        (("rollback", "digits"), ["no earlier version to roll back to"]),
        (("promote", "digits:2", "--alias", "Prod!"), ["'Prod!' is not a valid alias name"]),
        (("promote", "digits:2", "--alias", "a" * 70), ["70 characters"]),
        (("promote", "digits:1"), ["already points at digits:1"]),
        (("models", "history", "digits", "--at", "yesterday"), ["not an ISO 8601 time"]),
        (("models", "history", "digits", "--at", "9999-12-31T23:59-14:00"), ["out of range"]),
        (("models", "history", "digits", "--at", "0001-01-01T00:00+14:00"), ["out of range"]),
        (("models", "history", "digits@production"), ["takes a model name, not a reference"]),
        (("rollback", "digits:2"), ["kiln rollback takes a model name, not a reference: digits"]),
        (("rollout", "digits@candidate"), ["kiln rollout takes a model name, not a reference"]),
        (("retrain", "digits:2"), ["kiln retrain takes a model name, not a reference"]),
        (("loop", "digits:2", "--once"), ["kiln loop takes a model name, not a reference"]),
        (("traffic", "stats", "digits:2"), ["takes a model name, not a reference"]),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    cli: Any, seeded: Settings, args: tuple[str, ...], fragments: list[str]
) -> None:
    message = error_of(cli(*args))
    for fragment in fragments:
        assert fragment in message


def test_importing_foreign_or_truncated_files(
    cli: Any, seeded: Settings, tmp_path: Path, switch_home: Callable[[Path], None]
) -> None:
    bundle = tmp_path / "good.tar"
    assert cli("models", "export", "digits:1", str(bundle)).exit_code == 0
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(bundle.read_bytes()[:1600])
    foreign = tmp_path / "photo.jpg"
    foreign.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))
    switch_home(tmp_path / "empty-home")
    assert "truncated" in error_of(cli("models", "import", str(truncated)))
    assert "is not a Kiln bundle" in error_of(cli("models", "import", str(foreign)))
    assert "no bundle file" in error_of(cli("models", "import", str(tmp_path / "missing.tar")))
    assert cli("models", "list", "--json").json() == {"models": []}


@pytest.mark.parametrize(
    "args",
    [
        ("promote", "digits:9"),
        ("promote", "digits:2", "--alias", "Prod!"),
        ("promote", "digitz:2"),
        ("compile", "digits:9"),
        ("retrain", "digitz"),
    ],
    ids=" ".join,
)
def test_a_bad_reference_fails_before_any_progress(
    cli: Any, seeded: Settings, args: tuple[str, ...]
) -> None:
    result = cli(*args)
    message = error_of(result)
    assert "digit" in message or "Prod!" in message
    assert "·" not in result.stderr, result.stderr  # progress lines start with a dot
    assert "running the evaluation gates" not in result.stderr and "compiling" not in result.stderr
