"""Ground truth arriving at a server: labels (classifiers) and values (regressors), checked
against the model they name, then handed to the feedback hook (which stores them beside the
traffic log they join)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from kiln.errors import FeedbackDisabled, FeedbackRejected
from kiln.serving.hooks import FeedbackHook
from kiln.serving.messages import Feedback
from kiln.serving.settings import ServingSettings
from kiln.serving.table import LoadedModel, ModelTable
from kiln.traffic.labels import CLASSIFICATION, REGRESSION, feedback_problem

FULL_REASONS = 100
"""Refused feedback items of one call that get their full reason whatever the others'."""

_NUMBER = re.compile(r"-?\d+")


class FeedbackIntake:
    """Takes the labels and values of feedback calls for the serving core."""

    def __init__(
        self, table: ModelTable, settings: ServingSettings, hook: FeedbackHook | None
    ) -> None:
        self.table = table
        self.settings = settings
        self.hook = hook

    def submit(self, items: Sequence[Feedback]) -> list[tuple[int, str]]:
        """Hand valid items to the feedback hook; returns (index, reason) of rejected ones.

        An item is checked against the model it names (the served models when it names
        none), per item: a classification model takes a label, refused here when out of
        range, with the valid range; a regression model takes a value, refused when NaN or
        infinite; the wrong one of the two, both or neither are refused saying which to send.
        Accepted items are kept all together or not at all: `FeedbackBufferFull`
        (RESOURCE_EXHAUSTED) when the store cannot take them now, so nothing acknowledged is
        ever dropped. More than `max_feedback_items` in one call is refused as a whole.
        Every refused item is listed with its reason; past the first `FULL_REASONS` refused,
        an item with the same problem as an earlier one says "same problem as item N", so that
        refusing every item of a call stays a small answer (about 25 bytes an item).
        """
        if self.hook is None:
            raise FeedbackDisabled(
                "this server has no feedback sink; start it with traffic logging enabled"
            )
        limit = self.settings.max_feedback_items
        if len(items) > limit:
            raise FeedbackRejected(
                f"{len(items)} feedback items in one call; at most {limit} are taken at once: "
                "split them into several calls"
            )
        rejected: list[tuple[int, str]] = []
        accepted: list[Feedback] = []
        expected: dict[str, tuple[str | None, int | None]] = {}
        for index, item in enumerate(items):
            if not item.request_id:
                rejected.append((index, "request_id is empty: give the `id` of the response"))
                continue
            if item.model not in expected:
                loaded = self._loaded(item.model)
                expected[item.model] = (_task(loaded), _num_classes(loaded))
            task, classes = expected[item.model]
            problem = feedback_problem(item.label, item.value, task, classes)
            if problem:
                rejected.append((index, problem))
            else:
                accepted.append(item)
        if accepted:
            self.hook(accepted)
        return _summarised(rejected)

    def _loaded(self, model: str) -> list[LoadedModel]:
        """`model`'s loaded versions (every served model's when `model` is "")."""
        if model:
            served = self.table.models.get(model)
            return served.by_version() if served else []
        return self.table.loaded()


def _task(loaded: list[LoadedModel]) -> str | None:
    """What feedback `loaded` takes: "regression" when every one is a regressor,
    "classification" when none is, None (either) when they differ or nothing is loaded."""
    tasks = {m.opened.task for m in loaded}
    if tasks == {REGRESSION}:
        return REGRESSION
    return CLASSIFICATION if tasks and REGRESSION not in tasks else None


def _num_classes(loaded: list[LoadedModel]) -> int | None:
    """Classes of the classifiers among `loaded`: the widest output row among them; None
    when nothing loaded says."""
    widths = [
        m.description.outputs[0].shape[-1]
        for m in loaded
        if m.opened.task != REGRESSION
        and m.description.outputs
        and len(m.description.outputs[0].shape) > 1
    ]
    return max(widths) if widths and min(widths) > 0 else None


def _summarised(rejected: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """`rejected` with the reason of each item past the first `FULL_REASONS` that has the
    same problem as an earlier one (the same reason but for the label's value) shortened to
    "same problem as item N"."""
    if len(rejected) <= FULL_REASONS:
        return rejected
    first: dict[str, int] = {}
    summary = []
    for position, (index, reason) in enumerate(rejected):
        earlier = first.setdefault(_NUMBER.sub("N", reason, count=1), index)
        if position < FULL_REASONS or earlier == index:
            summary.append((index, reason))
        else:
            summary.append((index, f"same problem as item {earlier}"))
    return summary
