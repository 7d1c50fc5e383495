"""Training hyper-parameters and the self-describing checkpoint config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kiln.errors import InvalidArgument

CLASSIFICATION_LOSSES = ("cross-entropy",)
REGRESSION_LOSSES = ("mse", "huber")
"""Huber is quadratic within one standard deviation of the target and linear beyond it (the
network learns standardised targets), so a few wild targets pull less than with MSE."""


@dataclass(frozen=True)
class TrainConfig:
    """What `kiln train` does. Defaults reach >= 0.95 on mnist-5k with `cnn` in 8 epochs;
    `TrainConfig.for_task("regression", ...)` starts from REGRESSION_DEFAULTS instead."""

    dataset: str = "mnist-5k"
    model: str = "cnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 8
    batch_size: int = 64  # small data: more steps per epoch beat bigger, faster batches
    lr: float = 3e-3  # AdamW peak; warm-up keeps early BatchNorm statistics from blowing up
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05  # of all steps, linear from 0 to lr
    min_lr_fraction: float = 0.02  # the cosine ends here, not at 0, so late epochs still learn
    grad_clip: float = 1.0  # max global grad norm; guards against a bad batch early on
    patience: int = 3  # epochs without a better validation loss before stopping early
    seed: int = 0
    threads: int = 0  # 0: the settings' thread count
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    task: str | None = None  # None: the data set's task; else it must be the data set's
    loss: str | None = None  # None: cross-entropy for a classifier, mse for a regressor
    # Text data sets only (None: kiln.text's defaults, or the pretrained encoder's own).
    tokenizer: str | None = None  # "bpe" or "wordpiece", trained on the training split
    vocab_size: int | None = None
    max_length: int | None = None  # tokens per text; longer texts are truncated

    @classmethod
    def for_task(cls, task: str, modality: str = "tensor", /, **given: Any) -> TrainConfig:
        """A config with the defaults that suit `task` and `modality`, overridden by `given`
        (a classifier's defaults are the class's own; a regressor's are REGRESSION_DEFAULTS;
        a text classifier's TEXT_DEFAULTS for its builder, `transformer` by default)."""
        defaults: dict[str, Any] = REGRESSION_DEFAULTS if task == "regression" else {}
        if modality == "text":
            model = given.get("model") or TEXT_MODEL
            defaults = TEXT_DEFAULTS.get(model, TEXT_DEFAULTS[TEXT_MODEL]) | {"model": model}
        return cls(**(defaults | given))

    def validate(self) -> None:
        if self.epochs < 1:
            raise InvalidArgument(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InvalidArgument(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InvalidArgument(f"--lr must be positive, got {self.lr}")
        if self.patience < 1:
            raise InvalidArgument(f"--patience must be at least 1, got {self.patience}")
        # numpy's and torch's generators take seeds in [0, 2**32) and [0, 2**64): refuse here,
        # with the option's name, what they would refuse deep inside training.
        if not 0 <= self.seed < 2**32:
            raise InvalidArgument(f"--seed must be in 0..{2**32 - 1}, got {self.seed}")
        if not 0 <= self.threads <= 4096:
            raise InvalidArgument(
                f"--threads must be 0 (the settings' count) to 4096, got {self.threads}"
            )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise InvalidArgument(f"{name} must be in (0, 0.5), got {value}")
        if self.task not in (None, "classification", "regression"):
            raise InvalidArgument(f"--task must be classification or regression, got '{self.task}'")
        self._validate_text()
        losses = CLASSIFICATION_LOSSES + REGRESSION_LOSSES
        if self.loss is not None and self.loss not in losses:
            raise InvalidArgument(f"--loss must be one of {', '.join(losses)}; got '{self.loss}'")

    def _validate_text(self) -> None:
        if self.tokenizer is not None and self.tokenizer not in TOKENIZER_KINDS:
            raise InvalidArgument(
                f"--tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got '{self.tokenizer}'"
            )
        if self.vocab_size is not None and self.vocab_size < 100:
            raise InvalidArgument(f"--vocab-size must be at least 100, got {self.vocab_size}")
        if self.max_length is not None and self.max_length < 1:
            raise InvalidArgument(f"--max-length must be at least 1, got {self.max_length}")

    def resolved(self, task: str) -> TrainConfig:
        """This config for a data set whose task is `task`, with the loss filled in.

        Raises InvalidArgument when `task` or `loss` was given and does not fit the data set.
        """
        if self.task is not None and self.task != task:
            hint = (
                "diabetes, autompg, or a Parquet file with a numeric 'target' column"
                if self.task == "regression"
                else "one with class labels (kiln datasets list)"
            )
            raise InvalidArgument(
                f"--task {self.task} does not fit data set '{self.dataset}', which is a "
                f"{task} set; drop --task, or train on a {self.task} set: {hint}"
            )
        allowed = REGRESSION_LOSSES if task == "regression" else CLASSIFICATION_LOSSES
        loss = self.loss or allowed[0]
        if loss not in allowed:
            raise InvalidArgument(
                f"--loss {loss} is for "
                f"{'classifiers' if loss in CLASSIFICATION_LOSSES else 'regressors'}; a {task} "
                f"model on '{self.dataset}' takes {' or '.join(allowed)}"
            )
        return replace(self, task=task, loss=loss)

    def as_dict(self) -> dict[str, Any]:
        """The fields, less the text settings nobody gave (an image or tabular run records
        what it recorded before text existed)."""
        return {
            key: value
            for key, value in asdict(self).items()
            if key not in TEXT_FIELDS or value is not None
        }

    def check_modality(self, modality: str, shape: tuple[int, ...] | None = None) -> None:
        """Refuse text settings (--tokenizer, --vocab-size, --max-length) for a data set whose
        `modality` is not "text" (`shape`: its samples' shape, when known)."""
        given = [
            f"--{key.replace('_', '-')}" for key in TEXT_FIELDS if getattr(self, key) is not None
        ]
        if given and modality != "text":
            holds = f"tensors of shape {shape}" if shape is not None else "no text"
            raise InvalidArgument(
                f"{' and '.join(given)} set how texts are tokenised, but data set "
                f"'{self.dataset}' holds {holds}; drop {'them' if len(given) > 1 else 'it'}, or "
                "train on a text data set (e.g. --dataset rotten-tomatoes)"
            )


TEXT_FIELDS = ("tokenizer", "vocab_size", "max_length")
TOKENIZER_KINDS = ("bpe", "wordpiece")
"""`kiln.text.KINDS`, spelled out: config is imported where kiln.text (tokenizers) need not be."""


REGRESSION_DEFAULTS: dict[str, Any] = {
    "model": "mlp",
    "model_args": {"hidden": [32], "dropout": 0.0},
    "epochs": 200,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "patience": 20,
    # A 32-wide MLP's step takes under a millisecond on one core; a second thread only adds
    # synchronisation (20x slower per step measured on the 2-core dev machine under load).
    "threads": 1,
}
"""For the small tabular sets regression is trained on here (a few hundred rows): one narrow
hidden layer without dropout (early stopping and weight decay regularise), many short epochs,
and patience for a validation loss that is noisy on ~40 samples. Chosen on diabetes and
autompg over 5 seeds against scikit-learn's linear baselines (benchmarks/regression.py);
wider or deeper nets, Huber loss, lr 3e-3 and weight decay 0.1 were all within noise."""


TEXT_MODEL = "transformer"
"""What `kiln train` trains on a text set without --model."""
TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "transformer": {
        "epochs": 4,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.1,
        "patience": 2,
        "vocab_size": 4000,
        "threads": 1,
    },
    "gru": {
        "epochs": 8,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 0.1,
        "patience": 2,
        "threads": 1,
    },
    "minilm": {
        "epochs": 2,
        "batch_size": 32,
        "lr": 5e-5,
        "weight_decay": 1e-2,
        "warmup_fraction": 0.1,
        "patience": 1,
        "max_length": 64,
        "threads": 1,
    },
}
"""Per text builder (a builder of your own gets the transformer's). Chosen on rotten-tomatoes
(10,159 training snippets; the builders' own dropout and word dropout defaults regularise):
the from-scratch transformer overfits after its second epoch, so a short cosine schedule
anneals while it still improves, and a 4,000-token vocabulary (0.768 test accuracy) suits it
better than 8,000 (0.763) or 2,000 (0.737); the GRU learns more slowly and takes a higher
rate and more epochs; fine-tuning a pretrained encoder takes a rate two orders lower, or its
weights are forgotten in the first steps. One thread: the same numbers as recorded (results are
deterministic per thread count), and faster than two on the shared 2-core machine (an epoch
of the transformer: 80 s against over 280 s measured under load)."""


class CheckpointConfig(BaseModel):
    """Everything needed to rebuild a model from its weights alone, plus where it came from."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: int = 1
    task: str = "classification"
    """"classification" (class scores out, one per `class_names`) or "regression" (one value
    per target out); versions written before regression existed are classifiers."""
    builder: str
    builder_args: dict[str, Any] = Field(default_factory=dict)
    input_name: str = "input"
    output_name: str = "logits"
    input_shape: list[int]
    input_dtype: str = "float32"
    class_names: list[str]
    normalization: dict[str, list[float]]
    dataset: str
    data_fingerprint: str
    split: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    train: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    run_id: str = ""
    torch_version: str = ""
    reference: dict[str, Any] = Field(default_factory=dict)
    """Input and prediction profile for drift (`kiln.data.profile`); empty for old versions."""
    target_normalization: dict[str, float] | None = Field(
        default=None, exclude_if=lambda value: value is None
    )
    """A regressor's training-target {"mean", "std"}, which its forward undoes (the weights
    hold them too); absent from a classifier's config, whose JSON stays as it was."""
    text: dict[str, Any] | None = Field(default=None, exclude_if=lambda value: value is None)
    """A text model's tokenizer settings (`kiln.text.TextTokenizer.settings()`: kind,
    vocab_size, max_length, pad_id, unk_id, pretrained, sha256); absent for other models."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def output_width(self) -> int:
        """Columns of the model's output: a score per class, or one predicted value."""
        return 1 if self.task == "regression" else self.num_classes
