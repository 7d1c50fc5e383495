"""Retraining a model Kiln did not train, from its own PyTorch module (issue #15, item 6): a
plain PyTorch regressor (diabetes) and classifier (digits), trained by the test as a user's
script would, registered with `kiln register --module --weights --dataset`, compiled,
promoted, its traffic logged and labelled, then `kiln retrain`: the next version is the same
module (builder, arguments, signature, task, classes, data set) with new weights, compiled with
parity against itself. A module registered without a data set is refused, saying why."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from safetensors.torch import save_file
from torch import nn

import kiln.registry
from kiln.data import Dataset, load_dataset
from kiln.settings import Settings
from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord
from tests.integration.two_tower import register_two_tower
from tests.unit import sources_models

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    dataset: str
    builder: str
    input: str
    task: str
    metric: str


CASES = {
    "regressor": Case(
        "diabetes", "tabular_regressor", "features:FP32:-1,10", "regression", "test_rmse"
    ),
    "classifier": Case(
        "digits", "digits_classifier", "pixels:FP32:-1,1,8,8", "classification", "test_accuracy"
    ),
}


def fit(case: Case, data: Dataset, epochs: int) -> nn.Module:
    """What a user's own training script does: their module, Adam, full batches."""
    model: nn.Module = getattr(sources_models, case.builder)()
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    if case.task == "regression":
        with torch.no_grad():
            for name, value in (("mean", x.mean(0)), ("std", x.std(0) + 1e-6),
                                ("target_mean", y.mean()), ("target_std", y.std())):  # fmt: skip
                getattr(model, name).copy_(value)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        out = model(x)
        loss = F.mse_loss(out[:, 0], y) if case.task == "regression" else F.cross_entropy(out, y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model.eval()


def register(cli: Any, name: str, case: Case, weights: Path, *extra: str) -> dict[str, Any]:
    done = cli(
        "register", name, "--module", f"tests.unit.sources_models:{case.builder}",
        "--weights", str(weights), "--input", case.input, "--task", case.task, *extra, "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    return dict(done.json())


def log_labelled_traffic(home: Path, name: str, version: int, case: Case, data: Dataset) -> int:
    """Served requests with their ground truth: validation samples and, to be left out of
    training, ten samples of the held-out test split."""
    samples = np.concatenate([data.val.x, data.test.x[:10]])
    truths = np.concatenate([data.val.y, data.test.y[:10]])
    width = 1 if case.task == "regression" else len(data.class_names)
    logger, feedback = TrafficLogger(home), FeedbackWriter(home)
    now_us = time.time_ns() // 1000
    for i, (x, y) in enumerate(zip(samples, truths, strict=True)):
        request_id = uuid.uuid4().hex
        answer = np.zeros((1, width), np.float32)
        logger.log(TrafficRecord(request_id, now_us - 1000 + i, name, version, 400,
                                 input=x[None].copy(), output=answer))  # fmt: skip
        if case.task == "regression":
            feedback.add(request_id, value=float(y), model=name, source="file", task=case.task)
        else:
            feedback.add(request_id, int(y), model=name, source="file")
    assert logger.close(30) and feedback.close(30)
    return len(samples)


@pytest.mark.parametrize("which", sorted(CASES))
def test_a_module_source_retrains_to_a_module_version(
    which: str, cli: Any, tmp_path: Path, settings: Settings
) -> None:
    case = CASES[which]
    data = load_dataset(case.dataset, settings)
    weights = tmp_path / "user.safetensors"
    save_file(fit(case, data, epochs=30).state_dict(), str(weights))
    parent = register(cli, "mine", case, weights, "--dataset", case.dataset)
    compiled = cli("compile", "mine:1", "--parity-samples", "64", "--json")
    assert compiled.exit_code == 0, compiled.stderr
    promoted = cli("promote", "mine:1", "--reason", "first")
    assert promoted.exit_code == 0, promoted.stderr
    logged = log_labelled_traffic(settings.home, "mine", 1, case, data)

    # The classifier's run reports in JSON, the regressor's in the table a user reads.
    as_json = case.task == "classification"
    done = cli("retrain", "mine", "--min-labels", "10", "--epochs", "3",
               *(["--json"] if as_json else []))  # fmt: skip
    assert done.exit_code == 0, done.stderr
    if as_json:
        result = json.loads(done.stdout)
        assert result["parent"] == "mine:1" and result["version"] == "mine:2"
        assert result["alias"] == "candidate" and "onnxruntime" in result["engines"]
    else:
        assert "retrained mine:2 from mine:1" in done.stdout and "test RMSE" in done.stdout

    with kiln.registry.open(settings=settings) as registry:
        version = registry.get_version("mine", 2)
        old = load_file(str(registry.artifact_file(registry.checkpoint("mine", 1))))
        new_blob = registry.artifact_file(registry.checkpoint("mine", 2))
        new = load_file(str(new_blob))
        artifacts = registry.artifacts("mine", 2)
        assert registry.resolve("mine@candidate").version == 2
    config, before = version.config, parent["config"]
    # The same module: kind, builder, arguments, signature, task, classes and data set.
    assert config["source"]["kind"] == "module"
    for key in ("builder", "model_args"):
        assert config["source"][key] == before["source"][key]
    for key in ("signature", "task", "class_names", "dataset", "split", "seed", "input_name"):
        assert config[key] == before[key], key
    assert config["source"]["sha256"] != before["source"]["sha256"]
    retrained = config["retrain"]
    assert retrained["parent"] == "mine:1" and retrained["warm_start"]
    assert retrained["labels"] == logged and retrained["excluded_heldout"] == 10
    assert version.lineage is not None and version.lineage.parent_version == 1
    # New weights for the same state dict; the scaling buffers are the user's, untouched.
    assert set(new) == set(old)
    assert any(not np.array_equal(new[k], old[k]) for k in new)
    if case.task == "regression":
        assert all(np.array_equal(new[k], old[k]) for k in ("mean", "std", "target_mean"))
    assert case.metric in version.metrics
    assert config["reference"]["predictions"]["samples"] == len(data.test)
    # Compiled from the module itself, with parity on the data set's held-out samples.
    engine = next(a for a in artifacts if a.kind.value == "onnxruntime")
    parity = engine.report["parity"]
    assert parity["passed"] and not parity["failures"]
    assert parity["held_out"][0]["samples"] > 0
    shown = cli("models", "show", "mine:2", "--json")
    assert shown.exit_code == 0 and "onnxruntime" in shown.stdout

    # The retrained version is a module source like its parent: it retrains in turn, with the
    # training configuration it recorded.
    assert config["train"]["model"] == before["source"]["builder"]
    assert cli("promote", "mine:2", "--force", "--reason", "test").exit_code == 0
    again = cli("retrain", "mine", "--min-labels", "10", "--epochs", "1", "--json")
    assert again.exit_code == 0, again.stderr
    with kiln.registry.open(settings=settings) as registry:
        third = registry.get_version("mine", 3)
    assert third.config["source"]["kind"] == "module"
    assert third.config["retrain"]["parent"] == "mine:2"
    assert third.config["train"]["epochs"] == 1
    assert third.config["train"]["lr"] == config["train"]["lr"]


def test_a_module_without_a_data_set_is_refused_saying_why(
    cli: Any, tmp_path: Path, settings: Settings
) -> None:
    case = CASES["regressor"]
    weights = tmp_path / "user.safetensors"
    save_file(sources_models.tabular_regressor().state_dict(), str(weights))
    register(cli, "bare", case, weights)
    promoted = cli("promote", "bare:1", "--reason", "first", "--force")
    assert promoted.exit_code == 0, promoted.stderr

    refused = cli("retrain", "bare", "--min-labels", "1")
    assert refused.exit_code == 2
    message = " ".join(refused.stderr.split())
    assert "registered without --dataset" in message
    assert "kiln register bare --module tests.unit.sources_models:tabular_regressor" in message
    assert "--dataset REF" in message


def test_a_module_with_two_inputs_is_refused_saying_why(
    cli: Any, tmp_path: Path, settings: Settings
) -> None:
    register_two_tower(cli, tmp_path, settings)
    refused = cli("retrain", "tower", "--min-labels", "1")
    assert refused.exit_code == 2
    message = " ".join(refused.stderr.split())
    assert "takes 2 input(s) (features, ids) and returns 2 output(s) (score, pooled)" in message
    assert "feeds one input tensor" in message
    assert "kiln register tower --module tests.unit.sources_models:two_tower" in message
