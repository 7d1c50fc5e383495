"""kiln.train: builders, checkpoints that rebuild themselves, determinism, schedule."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.errors import CheckpointInvalid, InvalidArgument, ModelBuilderNotFound
from kiln.settings import Settings
from kiln.train import TrainConfig, build_model, load_checkpoint, predict_logits, train
from kiln.train.trainer import lr_factor


@pytest.mark.parametrize(
    ("builder", "shape"),
    [
        ("mlp", (4,)),
        ("mlp", (1, 8, 8)),
        ("cnn", (1, 28, 28)),
        ("resnet", (1, 28, 28)),
        ("resnet", (3, 32, 32)),
        ("cnn", (3, 32, 32)),
    ],
)
def test_builders_produce_logits(builder: str, shape: tuple[int, ...]) -> None:
    model = build_model(builder, shape, 7).eval()
    with torch.no_grad():
        out = model(torch.rand(5, *shape))
    assert out.shape == (5, 7)


def test_unknown_builder_lists_the_builtins() -> None:
    with pytest.raises(ModelBuilderNotFound, match="did you mean 'cnn'") as err:
        build_model("cn", (1, 28, 28), 10)
    assert "mlp, cnn, resnet" in str(err.value)


def test_cnn_refuses_vectors_and_suggests_mlp() -> None:
    with pytest.raises(InvalidArgument, match="--model mlp"):
        build_model("cnn", (64,), 10)


def test_bad_builder_argument() -> None:
    with pytest.raises(InvalidArgument, match="bad arguments for model builder 'mlp'"):
        build_model("mlp", (4,), 3, depth=9)


def test_user_builder_from_module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            import math
            from torch import nn

            def tiny(input_shape, num_classes, width=8):
                return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width),
                                     nn.ReLU(), nn.Linear(width, num_classes))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("my_models:tiny", (1, 8, 8), 10, width=4)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ModelBuilderNotFound, match="cannot import module"):
        build_model("no_such_module_xyz:tiny", (4,), 2)
    with pytest.raises(ModelBuilderNotFound, match="has no function 'nope'"):
        build_model("my_models:nope", (4,), 2)


def test_lr_schedule_warms_up_then_decays_to_floor() -> None:
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup, 0.05) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] == pytest.approx(0.05)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> object:
    home = tmp_path_factory.mktemp("home")
    return train(
        TrainConfig(dataset="digits", model="mlp", epochs=2, seed=1),
        Settings(home=home),
        show_progress=False,
    )


def test_run_directory_has_history_curves_and_checkpoint(trained: object) -> None:
    from kiln.train import TrainResult

    assert isinstance(trained, TrainResult)
    run = trained.run_dir
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(trained.history) == trained.metrics["epochs_run"]
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "lr"} <= json.loads(lines[0]).keys()
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert config["builder"] == "mlp" and config["input_shape"] == [1, 8, 8]
    assert config["data_fingerprint"] == trained.dataset.fingerprint
    assert len(config["class_names"]) == 10 and config["seed"] == 1
    m = trained.metrics
    assert len(m["confusion"]) == 10 and sum(map(sum, m["confusion"])) == len(trained.dataset.test)
    assert 0.0 <= m["ece"] <= 1.0
    assert set(m["per_class_accuracy"]) == set(trained.dataset.class_names)


def test_same_seed_gives_identical_metrics(trained: object, tmp_path: Path) -> None:
    from kiln.train import TrainResult

    assert isinstance(trained, TrainResult)
    again = train(
        TrainConfig(dataset="digits", model="mlp", epochs=2, seed=1),
        Settings(home=tmp_path),
        show_progress=False,
    )
    strip = [
        {k: v for k, v in row.items() if k not in ("seconds", "train_seconds")}
        for row in trained.history
    ]
    assert strip == [
        {k: v for k, v in row.items() if k not in ("seconds", "train_seconds")}
        for row in again.history
    ]
    assert again.metrics["test_accuracy"] == trained.metrics["test_accuracy"]
    assert again.metrics["confusion"] == trained.metrics["confusion"]


def test_fresh_process_rebuilds_from_the_safetensors_file_alone(
    trained: object, tmp_path: Path
) -> None:
    from kiln.train import TrainResult

    assert isinstance(trained, TrainResult)
    # Copy only the weights file: the config embedded in its header must be enough.
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(trained.checkpoint.read_bytes())
    inputs = tmp_path / "x.npy"
    np.save(inputs, trained.dataset.test.x)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from kiln.train import load_checkpoint, predict_logits
        ck = load_checkpoint({str(lone)!r})
        np.save({str(tmp_path / "out.npy")!r}, predict_logits(ck.model, np.load({str(inputs)!r})))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    expected = predict_logits(load_checkpoint(trained.checkpoint).model, trained.dataset.test.x)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_truncated_checkpoint_is_refused(trained: object, tmp_path: Path) -> None:
    from kiln.train import TrainResult

    assert isinstance(trained, TrainResult)
    data = trained.checkpoint.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointInvalid, match="truncated"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointInvalid):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_invalid_hyper_parameters() -> None:
    with pytest.raises(InvalidArgument, match="--epochs must be at least 1"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(InvalidArgument, match="--batch-size"):
        TrainConfig(batch_size=0).validate()
