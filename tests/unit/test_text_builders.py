"""Text builders (contract 3): logits of the right shape, the same logits whatever padding
follows a row, finite logits for an all-padding row, and torch.export with dynamic batch and
sequence axes; batches cut to their longest row; the builders' errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kiln.errors import InvalidArgument
from kiln.train import TokenInputs, build_model, build_text_model
from kiln.train.text_builders import TextGRU, gru_steps, reverse_within_length

VOCAB, CLASSES, MAX_LENGTH = 50, 3, 16
TINY: dict[str, dict[str, Any]] = {
    "transformer": {"width": 16, "layers": 2, "heads": 2},
    "gru": {"width": 8, "hidden": 8, "layers": 2},
}


def tiny(builder: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_text_model(
        builder, VOCAB, CLASSES, pad_id=0, max_length=MAX_LENGTH, **TINY[builder]
    )
    return model.eval()


def batch(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (never the pad id) for rows of `lengths`, padded with 0 to `width`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=generator)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("builder", list(TINY))
def test_logits_have_one_score_per_class(builder: str) -> None:
    logits = tiny(builder)(*batch([3, 7, 1], 7))
    assert logits.shape == (3, CLASSES) and logits.dtype == torch.float32


@pytest.mark.parametrize("builder", list(TINY))
def test_padding_after_a_row_does_not_change_its_logits(builder: str) -> None:
    model = tiny(builder)
    ids, mask = batch([5, 2], 5)
    padded_ids = torch.cat([ids, torch.zeros(2, 9, dtype=torch.int64)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 9, dtype=torch.int64)], 1)
    with torch.no_grad():
        short, long = model(ids, mask), model(padded_ids, padded_mask)
        alone = model(ids[1:, :2], mask[1:, :2])
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)
    torch.testing.assert_close(short[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("builder", list(TINY))
def test_a_row_without_tokens_gets_finite_logits(builder: str) -> None:
    with torch.no_grad():
        logits = tiny(builder)(*batch([0, 4], 4))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("builder", list(TINY))
def test_exports_with_dynamic_batch_and_sequence_axes(builder: str) -> None:
    model = tiny(builder)
    example = batch([4, 2, 6], 6)
    dims = {0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("tokens", max=16)}
    program = torch.export.export(model, example, dynamic_shapes=(dims, dims))
    for lengths, width in (([3], 3), ([9, 1, 5, 0, 12], 12)):
        inputs = batch(lengths, width, seed=width)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(*inputs), model(*inputs), atol=1e-5, rtol=0)


def test_the_exported_gru_recurrence_is_the_library_gru() -> None:
    torch.manual_seed(0)
    layer = torch.nn.GRU(4, 6, batch_first=True)
    x = torch.randn(2, 5, 4)

    class Steps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return gru_steps(self.gru, x)

    dims = {0: torch.export.Dim("n"), 1: torch.export.Dim("t")}
    program = torch.export.export(Steps(), (x,), dynamic_shapes=(dims,))
    longer = torch.randn(3, 9, 4)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(longer), layer(longer)[0], atol=1e-6, rtol=0)


def test_reversing_within_length_leaves_padding_in_place() -> None:
    x = torch.arange(5.0).reshape(1, 5, 1).repeat(2, 1, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    reversed_x = reverse_within_length(x, mask)
    assert reversed_x[0, :, 0].tolist() == [2, 1, 0, 3, 4]
    assert reversed_x[1, :, 0].tolist() == [4, 3, 2, 1, 0]
    torch.testing.assert_close(reverse_within_length(reversed_x, mask), x)


def test_a_batch_is_cut_to_its_longest_row() -> None:
    ids, mask = batch([2, 9, 3, 1], 12)
    inputs = TokenInputs(ids.numpy(), mask.numpy())
    short_ids, short_mask = inputs.batch(torch.tensor([0, 2, 3]))
    assert short_ids.shape == (3, 3) and short_mask.sum().item() == 6
    assert inputs.batch(torch.tensor([1, 0]))[0].shape == (2, 9)
    assert inputs.prediction_order().tolist() == [3, 0, 2, 1]


def test_builder_arguments_and_modalities_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="bad arguments for model builder 'gru'"):
        build_text_model("gru", VOCAB, 2, pad_id=0, max_length=8, heads=4)
    with pytest.raises(InvalidArgument, match="takes tensors, not text"):
        build_text_model("cnn", VOCAB, 2, pad_id=0, max_length=8)
    with pytest.raises(InvalidArgument, match="takes text"):
        build_model("transformer", (8,), 2)
    with pytest.raises(InvalidArgument, match="not a multiple of heads"):
        build_text_model("transformer", VOCAB, 2, pad_id=0, max_length=8, width=10, heads=4)


def test_the_gru_is_bidirectional_and_pools_mean_and_max() -> None:
    model = tiny("gru")
    assert isinstance(model, TextGRU)
    assert len(model.forward_layers) == len(model.backward_layers) == 2
    assert model.head.in_features == 4 * TINY["gru"]["hidden"]


@pytest.mark.parametrize("builder", list(TINY))
def test_token_dropout_acts_in_training_only(builder: str) -> None:
    model = build_text_model(
        builder, VOCAB, CLASSES, pad_id=0, max_length=MAX_LENGTH, token_dropout=0.5,
        dropout=0.0, **TINY[builder],
    )  # fmt: skip
    inputs = batch([6, 6], 6)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), model(*inputs))
        model.train()
        torch.manual_seed(1)
        first = model(*inputs)
        torch.manual_seed(2)
        assert not torch.equal(first, model(*inputs))
