"""`kiln train` and `kiln datasets` through the real CLI entry point: the issue's acceptance."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from PIL import Image

from tests.conftest import run_kiln


@pytest.mark.slow
def test_cnn_on_mnist_5k_reaches_95_percent(cli: Any) -> None:
    result = cli(
        "train", "--dataset", "mnist-5k", "--model", "cnn", "--epochs", "8", "--seed", "0", "--json"
    )
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["metrics"]["test_accuracy"] >= 0.95
    assert report["duration_s"] > 0
    assert Path(report["checkpoint"]).is_file()


@pytest.mark.slow
def test_mlp_on_digits_reaches_95_percent_and_is_reproducible(cli: Any) -> None:
    args = ("train", "--dataset", "digits", "--model", "mlp", "--epochs", "8", "--seed", "0")
    first = cli(*args, "--json")
    second = cli(*args, "--json")
    assert first.exit_code == 0, first.stderr
    a, b = first.json(), second.json()
    assert a["metrics"]["test_accuracy"] >= 0.95
    drop = ("duration_s", "train_samples_per_s")
    assert {k: v for k, v in a["metrics"].items() if k not in drop} == {
        k: v for k, v in b["metrics"].items() if k not in drop
    }


def test_human_output_prints_the_evaluation(cli: Any) -> None:
    result = cli("train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert "test accuracy" in result.stdout and "per-class accuracy" in result.stdout


def test_version_and_datasets(cli: Any) -> None:
    version = cli("version", "--json")
    assert version.exit_code == 0 and version.json()["kiln"]
    listing = cli("datasets", "list", "--json").json()
    names = {d["name"]: d for d in listing["datasets"]}
    assert names["mnist-5k"]["samples"] == 5000 and names["mnist-5k"]["status"] == "available"
    shown = cli("datasets", "show", "digits-28", "--json").json()
    assert shown["input_shape"] == [1, 28, 28] and len(shown["fingerprint"]) == 64


def _bad_parquet(tmp: Path, kind: str) -> str:
    path = tmp / f"{kind}.parquet"
    frames = {
        "nolabel": pl.DataFrame({"features": [[1.0, 2.0]] * 10}),
        "nan": pl.DataFrame({"features": [[1.0, float("nan")]] * 10, "label": [0, 1] * 5}),
        "ragged": pl.DataFrame({"features": [[1.0, 2.0], [3.0]] * 5, "label": [0, 1] * 5}),
        "empty": pl.DataFrame(
            {"features": [], "label": []},
            schema={"features": pl.List(pl.Float32), "label": pl.Int64},
        ),
    }
    frames[kind].write_parquet(path)
    return str(path)


def _broken_image_folder(tmp: Path) -> str:
    root = tmp / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            buf = io.BytesIO()
            Image.new("L", (8, 8), i * 40).save(buf, format="PNG")
            (root / cls / f"{i}.png").write_bytes(buf.getvalue())
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    return str(root)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "mnist"], "no data set 'mnist'"),
        (["--model", "transformer"], "no model builder 'transformer'"),
        (["--dataset", "parquet:nolabel"], "no 'label' column"),
        (["--dataset", "parquet:nan"], "NaN"),
        (["--dataset", "parquet:ragged"], "ragged"),
        (["--dataset", "parquet:empty"], "empty"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--dataset", "./no/such/images"], "does not exist"),
        (["--dataset", "images:broken"], "corrupt.jpg"),
        (["--model-arg", "oops"], "not key=value"),
    ],
    ids=[
        "dataset",
        "model",
        "no-label",
        "nan",
        "ragged",
        "empty",
        "epochs",
        "folder",
        "image",
        "model-arg",
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    cli: Any, tmp_path: Path, args: list[str], message: str
) -> None:
    resolved = []
    for arg in args:
        if arg.startswith("parquet:"):
            resolved.append(_bad_parquet(tmp_path, arg.split(":", 1)[1]))
        elif arg == "images:broken":
            resolved.append(_broken_image_folder(tmp_path))
        else:
            resolved.append(arg)
    result = (
        cli("train", "--epochs", "1", *resolved)
        if "--epochs" not in args
        else cli("train", *resolved)
    )
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_errors_show_no_traceback_unless_debug(kiln_home: Path) -> None:
    plain = run_kiln("datasets", "show", "nope")
    assert plain.exit_code == 2 and "Traceback" not in plain.stderr
    assert "kiln datasets list" in plain.stderr
    debug = run_kiln("--debug", "datasets", "show", "nope")
    assert debug.exit_code != 0 and "Traceback" in debug.stderr


def test_train_with_name_registers_a_version_with_lineage(cli: Any) -> None:
    first = cli("train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--name",
                "digits-mlp", "--json")  # fmt: skip
    assert first.exit_code == 0, first.stderr
    assert first.json()["registered"]["reference"] == "digits-mlp:1"
    second = cli("train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--name",
                 "digits-mlp", "--json")  # fmt: skip
    assert second.json()["registered"]["version"] == 2
    shown = cli("models", "show", "digits-mlp", "--json")
    assert shown.exit_code == 0, shown.stderr
    text = shown.stdout
    assert first.json()["data_fingerprint"] in text and first.json()["run_id"] in text


def test_bad_model_name_fails_before_training(cli: Any) -> None:
    result = cli("train", "--dataset", "digits", "--model", "mlp", "--name", "Bad Name!")
    assert result.exit_code == 2
    assert "epoch" not in result.stderr


def test_train_with_compile_registers_a_verified_engine(cli: Any) -> None:
    result = cli("train", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
                 "--name", "quick", "--compile", "onnxruntime", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = result.json()["compile"]
    statuses = {r["kind"]: r["status"] for r in report["results"]}
    assert statuses["onnxruntime"] == "passed"
    shown = cli("models", "show", "quick:1", "--json").stdout
    assert "onnxruntime" in shown


def test_compile_needs_a_name(cli: Any) -> None:
    result = cli("train", "--dataset", "digits", "--model", "mlp", "--compile", "onnxruntime")
    assert result.exit_code == 2
    assert "add --name NAME" in result.stderr
