"""`kiln export triton REF DIR`: a Triton model repository whose config is what `kiln serve`
reports for the same version.

There is no Triton server here (the PyPI `tritonserver` package is a placeholder), so the
repository is checked as Triton reads it: config.pbtxt parsed strictly into tritonclient's own
`ModelConfig` (unknown fields rejected), compared with a real `kiln serve`'s ModelConfig RPC;
model.onnx against the registry's verified artifact; labels.txt against the class names.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import kiln.registry
from kiln.cli.export import FamilyKind
from kiln.registry import Registry
from kiln.serving.triton_export import ONNX_FAMILY
from kiln.settings import Settings
from kiln_engines.backends.onnxruntime import optimize
from tests.integration.grpc_harness import register, running_server, write_classifier
from tests.integration.regressors import REGRESSION_CONFIG, write_regressor
from tests.integration.text_serving_models import register_text_version, tokenizer

CLASSES = [f"digit-{i}" for i in range(10)]


def _config(model_dir: Path) -> Any:
    """DIR/NAME/config.pbtxt as Triton parses it: strictly, into its own ModelConfig."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def _served_config(server: Any, name: str, version: int) -> Any:
    with server.client() as client:
        return client.get_model_config(name, str(version), as_json=False).config


def _without_labels(config: Any) -> Any:
    """The config less what only an export sets (the served model has no label file)."""
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    for output in copy.output:
        output.label_filename = ""
    return copy


def _classifier(registry: Registry, workdir: Path, name: str, seed: int = 1) -> int:
    """A classifier registered with class names and an onnx engine (as `kiln register`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / f"{name}.safetensors"
    checkpoint.write_bytes(b"checkpoint")
    config = {"task": "classification", "class_names": CLASSES}
    v = registry.register_version(name, checkpoint=checkpoint, config=config, metrics={})
    onnx_file = write_classifier(workdir / f"{name}-{seed}.onnx", seed)
    registry.add_artifact(name, v.version, kind="onnx", path=onnx_file)
    return v.version


def _regressor(registry: Registry, workdir: Path, name: str) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / f"{name}.safetensors"
    checkpoint.write_bytes(b"checkpoint")
    v = registry.register_version(
        name, checkpoint=checkpoint, config=dict(REGRESSION_CONFIG), metrics={}
    )
    path = write_regressor(workdir / f"{name}.onnx", np.linspace(-1, 1, 10), 0.5)
    registry.add_artifact(name, v.version, kind="onnx", path=path)
    return v.version


@pytest.fixture
def registry(settings: Settings) -> Any:
    with kiln.registry.open(settings=settings) as opened:
        yield opened


def test_the_kinds_offered_are_the_onnx_family() -> None:
    assert typing.get_args(FamilyKind) == tuple(k.value for k in ONNX_FAMILY)


@pytest.mark.parametrize(
    ("options", "batching"),
    [
        ((), {}),
        (
            ("--max-batch-size", "8", "--max-queue-delay-us", "500", "--max-queue-size", "16"),
            {"max_batch_size": 8, "max_queue_delay_us": 500, "max_queue_size": 16},
        ),
    ],
    ids=["serve-defaults", "batching-options"],
)
def test_config_is_what_kiln_serve_reports(
    cli: Any,
    registry: Registry,
    kiln_home: Path,
    tmp_path: Path,
    options: tuple[str, ...],
    batching: dict[str, int],
) -> None:
    digits = register(registry, tmp_path / "w", "digits", seed=3)
    prices = _regressor(registry, tmp_path / "w", "prices")
    repo = tmp_path / "repo"
    for ref in (digits.ref, f"prices:{prices}"):
        result = cli("export", "triton", ref, str(repo), *options)
        assert result.exit_code == 0, result.stderr

    with running_server(kiln_home, models=(digits.ref, f"prices:{prices}"), **batching) as server:
        served = {
            "digits": _served_config(server, "digits", digits.version),
            "prices": _served_config(server, "prices", prices),
        }
    for name, version in (("digits", digits.version), ("prices", prices)):
        exported = _config(repo / name)
        assert list(exported.input) == list(served[name].input)
        assert list(exported.output) == list(served[name].output)
        assert exported.max_batch_size == served[name].max_batch_size
        assert exported.dynamic_batching == served[name].dynamic_batching
        assert exported == served[name]  # platform, backend, versions, instances: all of it
        assert exported.platform == "onnxruntime_onnx"
        assert exported.version_policy.specific.versions == [version]
        assert (repo / name / str(version) / "model.onnx").is_file()
    digits_config = _config(repo / "digits")
    assert digits_config.max_batch_size == batching.get("max_batch_size", 32)
    assert list(digits_config.input[0].dims) == [1, 28, 28]  # no batch axis
    assert digits_config.input[0].data_type == mc.TYPE_FP32
    assert list(_config(repo / "prices").output[0].dims) == [1]


def test_engine_bytes_and_labels(cli: Any, registry: Registry, tmp_path: Path) -> None:
    version = _classifier(registry, tmp_path / "w", "digits")
    repo = tmp_path / "repo"

    result = cli("export", "triton", f"digits:{version}", str(repo), "--json")

    assert result.exit_code == 0, result.stderr
    payload = result.json()
    model_dir = repo / "digits"
    artifact = registry.artifacts("digits", version, "onnx")[0]
    engine = model_dir / str(version) / "model.onnx"
    assert engine.read_bytes() == registry.artifact_file(artifact).read_bytes()
    assert payload["sha256"] == artifact.sha256
    assert payload["engine"] == str(engine)
    assert (model_dir / "labels.txt").read_text().splitlines() == CLASSES
    config = _config(model_dir)
    assert [o.label_filename for o in config.output] == ["labels.txt"]
    assert payload["labels"] == str(model_dir / "labels.txt")
    assert payload["labels_output"] == "logits"
    assert payload["run"] == f"tritonserver --model-repository {repo}"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        str(version),
        "config.pbtxt",
        "labels.txt",
    ]


def test_a_regressor_gets_no_label_file(cli: Any, registry: Registry, tmp_path: Path) -> None:
    version = _regressor(registry, tmp_path / "w", "prices")

    result = cli("export", "triton", f"prices:{version}", str(tmp_path / "repo"), "--json")

    assert result.exit_code == 0, result.stderr
    assert result.json()["labels"] is None
    assert not (tmp_path / "repo" / "prices" / "labels.txt").exists()
    assert [o.label_filename for o in _config(tmp_path / "repo" / "prices").output] == [""]


def test_options_rename_and_size_the_model(cli: Any, registry: Registry, tmp_path: Path) -> None:
    version = _classifier(registry, tmp_path / "w", "digits")
    repo = tmp_path / "repo"

    result = cli(
        "export", "triton", f"digits:{version}", str(repo), "--name", "mnist",
        "--instances", "3", "--instance-kind", "gpu", "--max-batch-size", "16",
        "--preferred-batch-size", "8", "--preferred-batch-size", "4",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert "tritonserver --model-repository" in result.stdout
    config = _config(repo / "mnist")
    assert config.name == "mnist"
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (3, mc.ModelInstanceGroup.KIND_GPU)
    ]
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert (repo / "mnist" / str(version) / "model.onnx").is_file()


def test_serve_settings_from_the_environment_apply(
    cli: Any, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = _classifier(registry, tmp_path / "w", "digits")
    monkeypatch.setenv("KILN_SERVE_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("KILN_SERVE_MAX_QUEUE_DELAY_US", "250")

    result = cli("export", "triton", f"digits:{version}", str(tmp_path / "repo"))

    assert result.exit_code == 0, result.stderr
    config = _config(tmp_path / "repo" / "digits")
    assert config.max_batch_size == 4
    assert config.dynamic_batching.max_queue_delay_microseconds == 250


def test_max_batch_size_zero_keeps_the_batch_axis(
    cli: Any, registry: Registry, tmp_path: Path
) -> None:
    version = _classifier(registry, tmp_path / "w", "digits")

    result = cli(
        "export", "triton", f"digits:{version}", str(tmp_path / "r"), "--max-batch-size", "0"
    )

    assert result.exit_code == 0, result.stderr
    config = _config(tmp_path / "r" / "digits")
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 1, 28, 28]
    assert not config.HasField("dynamic_batching")


def test_onnxruntime_artifact_is_a_valid_onnx_model(
    cli: Any, registry: Registry, tmp_path: Path
) -> None:
    """The plain export is preferred; the onnxruntime-optimised one on request, or when it is
    the only ONNX-family engine, is still a model onnx.checker accepts."""
    version = _classifier(registry, tmp_path / "w", "digits")
    plain = registry.artifacts("digits", version, "onnx")[0]
    optimised = tmp_path / "w" / "model.ort.onnx"
    optimize(registry.artifact_file(plain), optimised)
    ort = registry.add_artifact("digits", version, kind="onnxruntime", path=optimised)
    ref = f"digits:{version}"

    default = cli("export", "triton", ref, str(tmp_path / "a"), "--json")
    chosen = cli("export", "triton", ref, str(tmp_path / "b"), "--kind", "onnxruntime", "--json")

    assert default.exit_code == 0 and chosen.exit_code == 0, default.stderr + chosen.stderr
    assert default.json()["kind"] == "onnx"
    assert chosen.json()["kind"] == "onnxruntime"
    assert any("onnxruntime-optimised" in n for n in chosen.json()["notes"])
    engine = tmp_path / "b" / "digits" / str(version) / "model.onnx"
    assert engine.read_bytes() == optimised.read_bytes()
    assert chosen.json()["sha256"] == ort.sha256
    onnx.checker.check_model(onnx.load(engine), full_check=True)
    assert _config(tmp_path / "b" / "digits") == _config(tmp_path / "a" / "digits")


def test_a_text_model_is_refused_unless_token_ids(
    cli: Any, registry: Registry, tmp_path: Path
) -> None:
    text_tokenizer = tokenizer()
    version = register_text_version(registry, tmp_path / "w", "reviews", text_tokenizer, 1)

    refused = cli("export", "triton", version.ref, str(tmp_path / "repo"))
    exported = cli("export", "triton", version.ref, str(tmp_path / "repo"), "--token-ids")

    assert refused.exit_code == 2
    assert "is a text model" in refused.stderr and "--token-ids" in refused.stderr
    assert exported.exit_code == 0, exported.stderr
    model_dir = tmp_path / "repo" / "reviews"
    config = _config(model_dir)
    assert [(i.name, i.data_type) for i in config.input] == [
        ("input_ids", mc.TYPE_INT64),
        ("attention_mask", mc.TYPE_INT64),
    ]
    assert all(list(i.dims) == [-1] for i in config.input)  # the sequence axis, dynamic
    tokenizers = registry.artifacts("reviews", version.version, "tokenizer")
    held = registry.artifact_file(tokenizers[-1]).read_bytes()
    assert (model_dir / "tokenizer.json").read_bytes() == held
    assert (model_dir / "labels.txt").read_text().splitlines() == ["negative", "positive"]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("Digits!", "is not a valid model name"),
        ("nosuch:1", "nosuch"),
        ("digits:9", "has no version 9"),
        ("digits@nosuch", "nosuch"),
    ],
)
def test_bad_references_exit_2(
    cli: Any, registry: Registry, tmp_path: Path, ref: str, message: str
) -> None:
    _classifier(registry, tmp_path / "w", "digits")

    result = cli("export", "triton", ref, str(tmp_path / "repo"))

    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "repo").exists()


def test_a_version_without_an_onnx_engine_exit_2(
    cli: Any, registry: Registry, tmp_path: Path
) -> None:
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "c.safetensors").write_bytes(b"checkpoint")
    (workdir / "model.pt2").write_bytes(b"not really a package")
    v = registry.register_version(
        "digits", checkpoint=workdir / "c.safetensors", config={}, metrics={}
    )
    registry.add_artifact("digits", v.version, kind="aotinductor", path=workdir / "model.pt2")

    result = cli("export", "triton", v.ref, str(tmp_path / "repo"), "--json")

    assert result.exit_code == 2
    error = result.json()["error"]
    assert error["code"] == "not_found"
    assert "no onnx or onnxruntime engine" in error["message"]
    assert "it has: aotinductor, checkpoint" in error["message"]
    assert f"kiln compile {v.ref} --target onnxruntime" in error["message"]
    kinds = cli("export", "triton", v.ref, str(tmp_path / "repo"), "--kind", "aotinductor")
    assert kinds.exit_code == 2


def test_an_existing_model_dir_is_kept_unless_force(
    cli: Any, registry: Registry, tmp_path: Path
) -> None:
    version = _classifier(registry, tmp_path / "w", "digits")
    repo = tmp_path / "repo"
    (repo / "digits").mkdir(parents=True)
    (repo / "digits" / "stale.txt").write_text("mine")
    (repo / "other").mkdir()
    (repo / "other" / "config.pbtxt").write_text("name: 'other'")
    ref = f"digits:{version}"

    refused = cli("export", "triton", ref, str(repo))
    forced = cli("export", "triton", ref, str(repo), "--force", "--json")

    assert refused.exit_code == 2
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert forced.exit_code == 0, forced.stderr
    assert forced.json()["replaced"] is True
    assert not (repo / "digits" / "stale.txt").exists()
    assert (repo / "digits" / "config.pbtxt").is_file()
    assert (repo / "other" / "config.pbtxt").read_text() == "name: 'other'"
    assert sorted(p.name for p in repo.iterdir()) == ["digits", "other"]  # nothing left over


def test_an_empty_model_dir_is_filled(cli: Any, registry: Registry, tmp_path: Path) -> None:
    version = _classifier(registry, tmp_path / "w", "digits")
    (tmp_path / "repo" / "digits").mkdir(parents=True)

    result = cli("export", "triton", f"digits:{version}", str(tmp_path / "repo"))

    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "repo" / "digits" / "config.pbtxt").is_file()


def test_a_dir_that_is_a_file_exit_2(cli: Any, registry: Registry, tmp_path: Path) -> None:
    version = _classifier(registry, tmp_path / "w", "digits")
    file = tmp_path / "repo"
    file.write_text("a file")

    result = cli("export", "triton", f"digits:{version}", str(file))

    assert result.exit_code == 2
    assert "is a file, not a directory" in result.stderr
    assert file.read_text() == "a file"


def test_preferred_sizes_beyond_the_batch_exit_2(
    cli: Any, registry: Registry, tmp_path: Path
) -> None:
    version = _classifier(registry, tmp_path / "w", "digits")
    ref, repo = f"digits:{version}", str(tmp_path / "repo")

    too_big = cli("export", "triton", ref, repo, "--max-batch-size", "8",
                  "--preferred-batch-size", "16")  # fmt: skip
    unbatched = cli("export", "triton", ref, repo, "--max-batch-size", "0",
                    "--preferred-batch-size", "4")  # fmt: skip

    assert too_big.exit_code == 2 and "outside 1..8" in too_big.stderr
    assert unbatched.exit_code == 2 and "needs batching" in unbatched.stderr
    assert not (tmp_path / "repo").exists()
