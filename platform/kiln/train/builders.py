"""Model builders: small, readable networks, plus any user builder `package.module:function`.

A builder is `fn(input_shape, num_classes, **args) -> nn.Module` producing `num_classes`
outputs per sample (the output width: 1 for a regressor) from *normalised* inputs.
`build_model` wraps it in a `Classifier` that normalises raw inputs first, so the exported
graph (and every engine built from it) takes the data set's raw values; `build_regressor`
wraps it in a `Regressor`, which also turns the network's standardised output back into the
target's own units, so engines return raw-unit predictions.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kiln.errors import InvalidArgument, ModelBuilderNotFound, did_you_mean
from kiln.train.text_builders import TEXT_BUILDERS

Builder = Callable[..., nn.Module]


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.1,
) -> nn.Module:
    """A multi-layer perceptron over the flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _require_image(input_shape: Sequence[int], builder: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise InvalidArgument(
            f"the '{builder}' builder needs image inputs (channels, height, width), "
            f"got shape {tuple(input_shape)}; use --model mlp for feature vectors"
        )
    c, h, w = (int(d) for d in input_shape)
    return c, h, w


def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    dropout: float = 0.25,
) -> nn.Module:
    """conv-bn-relu blocks, each halving the resolution, then a small dense head."""
    c, h, w = _require_image(input_shape, "cnn")
    layers: list[nn.Module] = []
    for out in channels:
        layers += [
            nn.Conv2d(c, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c, h, w = out, h // 2, w // 2
    if h == 0 or w == 0:
        raise InvalidArgument(
            f"input {tuple(input_shape)} is too small for {len(channels)} pooling stages; "
            "pass fewer channels, e.g. --model-arg 'channels=[32]'"
        )
    layers += [
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(c * h * w, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2015)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


def resnet(
    input_shape: Sequence[int],
    num_classes: int,
    widths: Sequence[int] = (16, 32, 64),
    blocks: int = 1,
) -> nn.Module:
    """A small ResNet for 28x28 / 32x32 inputs: a stem, stages that halve resolution, GAP."""
    c, _, _ = _require_image(input_shape, "resnet")
    layers: list[nn.Module] = [
        nn.Conv2d(c, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    c_in = widths[0]
    for stage, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            layers.append(BasicBlock(c_in, width, stride))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


BUILDERS: dict[str, Builder] = {"mlp": mlp, "cnn": cnn, "resnet": resnet}


class Classifier(nn.Module):
    """Normalise raw inputs with fixed statistics, then run the network; returns logits."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((x - self.mean) / self.std)
        return out


class Regressor(nn.Module):
    """Normalise raw inputs, run the network, de-standardise: one prediction per row in the
    target's units, shape (n, 1).

    The network learns standardised targets (mean 0, std 1 on the training split), so one
    learning rate and one Huber threshold suit targets of any scale; `standardized` is what
    the loss sees, `forward` what every engine computes.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: torch.Tensor,
        std: torch.Tensor,
        target_mean: torch.Tensor,
        target_std: torch.Tensor,
    ) -> None:
        super().__init__()
        self.net = net
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.target_mean: torch.Tensor
        self.target_std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("target_mean", target_mean)
        self.register_buffer("target_std", target_std)

    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((x - self.mean) / self.std)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardized(x) * self.target_std + self.target_mean


class StandardizedRegressor(nn.Module):
    """A `Regressor` whose forward is its `standardized`: what DistributedDataParallel wraps
    for training, since DDP averages the gradients of passes through the wrapped module's
    forward only, and the loss trains the standardised output, not `forward`'s."""

    def __init__(self, regressor: Regressor) -> None:
        super().__init__()
        self.regressor = regressor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor.standardized(x)


def resolve_builder(name: str, builtins: Mapping[str, Builder] = BUILDERS) -> Builder:
    """Return a built-in builder by name (from `builtins`), or import `package.module:function`."""
    if name in builtins:
        return builtins[name]
    if ":" not in name:
        raise ModelBuilderNotFound(
            f"no model builder '{name}'{did_you_mean(name, builtins) or '.'} "
            f"Built-in builders: {', '.join(builtins)}; or give your own as package.module:function"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelBuilderNotFound(
            f"cannot import module '{module_name}' for builder '{name}': {exc}; "
            "check the module is on PYTHONPATH"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelBuilderNotFound(f"module '{module_name}' has no function '{attr}'")
    return fn  # type: ignore[no-any-return]


def normalization_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Images normalise per channel; anything else per feature."""
    if len(input_shape) == 3:
        return (1, int(input_shape[0]), 1, 1)
    return (1, *(int(d) for d in input_shape))


def _network(
    builder: str,
    input_shape: Sequence[int],
    width: int,
    normalization: dict[str, list[float]] | None,
    builder_args: dict[str, Any],
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The builder's network for `width` outputs and the input statistics as tensors."""
    if builder in TEXT_BUILDERS:
        raise InvalidArgument(
            f"no model builder '{builder}' for tensors: '{builder}' takes text (token ids), but "
            f"this data set holds tensors of shape {tuple(input_shape)}; use "
            f"{', '.join(BUILDERS)}, or train '{builder}' on a text data set (kiln datasets list)"
        )
    fn = resolve_builder(builder)
    try:
        net = fn(tuple(input_shape), width, **builder_args)
    except TypeError as exc:
        raise InvalidArgument(f"bad arguments for model builder '{builder}': {exc}") from exc
    shape = normalization_shape(input_shape)
    if normalization is None:
        mean, std = torch.zeros(shape), torch.ones(shape)
    else:
        mean = torch.tensor(normalization["mean"], dtype=torch.float32).reshape(shape)
        std = torch.tensor(normalization["std"], dtype=torch.float32).reshape(shape)
    return net, mean, std


def build_model(
    builder: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    normalization: dict[str, list[float]] | None = None,
    **builder_args: Any,
) -> Classifier:
    """Build a classifier taking raw inputs of `input_shape` and returning logits.

    `normalization` ({"mean": [...], "std": [...]}, per channel or per feature) defaults to the
    identity. Raises ModelBuilderNotFound or InvalidArgument (bad arguments for the builder).
    """
    net, mean, std = _network(builder, input_shape, num_classes, normalization, builder_args)
    return Classifier(net, mean, std)


def build_regressor(
    builder: str,
    input_shape: Sequence[int],
    *,
    normalization: dict[str, list[float]] | None = None,
    target_normalization: dict[str, float] | None = None,
    **builder_args: Any,
) -> Regressor:
    """Build a regressor taking raw inputs of `input_shape` and returning one prediction per
    row in the target's units (the builder is asked for an output width of 1).

    `target_normalization` ({"mean": m, "std": s} of the training targets) defaults to the
    identity; `normalization` as for `build_model`. Raises what `build_model` raises.
    """
    net, mean, std = _network(builder, input_shape, 1, normalization, builder_args)
    target = target_normalization or {"mean": 0.0, "std": 1.0}
    return Regressor(
        net,
        mean,
        std,
        torch.tensor([float(target["mean"])], dtype=torch.float32),
        torch.tensor([float(target["std"])], dtype=torch.float32),
    )


def build_text_model(
    builder: str,
    vocab_size: int,
    num_classes: int,
    *,
    pad_id: int,
    max_length: int,
    **builder_args: Any,
) -> nn.Module:
    """Build a text classifier: `forward(input_ids, attention_mask)` -> logits (n, num_classes).

    `builder` is one of `TEXT_BUILDERS` or `package.module:function` with the text builder
    signature (`kiln.train.text_builders`). Raises ModelBuilderNotFound, or InvalidArgument for
    an image or feature-vector builder or bad arguments.
    """
    if builder in BUILDERS:
        raise InvalidArgument(
            f"the '{builder}' builder takes tensors, not text; text data sets train "
            f"{', '.join(TEXT_BUILDERS)} (e.g. --model transformer)"
        )
    fn = resolve_builder(builder, TEXT_BUILDERS)
    try:
        return fn(vocab_size, num_classes, pad_id=pad_id, max_length=max_length, **builder_args)
    except TypeError as exc:
        raise InvalidArgument(f"bad arguments for model builder '{builder}': {exc}") from exc
