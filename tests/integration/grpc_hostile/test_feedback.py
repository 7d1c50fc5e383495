"""Feedback is refused in the answer or kept; never silently dropped (3b, 15)."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc

import kiln.registry
from kiln.serving.grpc.generated.kiln.v1 import feedback_pb2, feedback_pb2_grpc
from kiln.serving.launcher import kiln_serve
from kiln.settings import Settings
from kiln.traffic import scan_feedback
from tests.integration.grpc_harness import ONE_THREAD, RunningServer, register
from tests.integration.grpc_hostile.calls import (
    CLIENT_DEFAULT_RECEIVE,
    FEEDBACK_LIMIT,
    INVALID,
    failure,
)


def items(labels: list[int], model: str = "digits") -> list[feedback_pb2.FeedbackItem]:
    return [
        feedback_pb2.FeedbackItem(request_id=f"r{i}", label=label, model_name=model)
        for i, label in enumerate(labels)
    ]


def test_a_feedback_batch_over_the_limit_is_refused_whole(
    server: RunningServer, feedback: feedback_pb2_grpc.FeedbackStub
) -> None:
    before = len(server.feedback)
    request = feedback_pb2.SubmitFeedbackBatchRequest(items=items([1] * 200_000))
    error = failure(lambda: feedback.SubmitFeedbackBatch(request, timeout=60))
    assert error.code() == INVALID, error.details()
    assert "200000 feedback items" in error.details() and "split" in error.details()
    assert len(server.feedback) == before  # nothing of it was kept


def test_labels_outside_the_models_classes_are_refused_per_item_with_the_range(
    server: RunningServer, feedback: feedback_pb2_grpc.FeedbackStub
) -> None:
    before = len(server.feedback)
    answer = feedback.SubmitFeedbackBatch(
        feedback_pb2.SubmitFeedbackBatchRequest(items=items([3, 10, 2**63 - 1, -1, 9])),
        timeout=30,
    )
    assert answer.accepted == 2
    reasons = {r.index: r.reason for r in answer.rejected}
    assert sorted(reasons) == [1, 2, 3]
    assert "valid labels are 0-9" in reasons[1] and "valid labels are 0-9" in reasons[2]
    assert "negative" in reasons[3]
    assert [f.label for f in server.feedback[before:]] == [3, 9]
    for label in (10, 2**63 - 1):
        item = items([label])[0]
        error = failure(
            lambda item=item: feedback.SubmitFeedback(
                feedback_pb2.SubmitFeedbackRequest(item=item), timeout=30
            )
        )
        assert error.code() == INVALID and "0-9" in error.details()


def test_a_call_whose_items_are_all_refused_fits_a_default_client(
    server: RunningServer, feedback: feedback_pb2_grpc.FeedbackStub
) -> None:
    # Every item refused, each with a different label: the answer lists every index, the
    # reasons summarised, within the 4 MB a client accepts by default.
    labels = [10 + i for i in range(FEEDBACK_LIMIT)]
    answer = feedback.SubmitFeedbackBatch(
        feedback_pb2.SubmitFeedbackBatchRequest(items=items(labels)), timeout=60
    )
    assert answer.accepted == 0
    assert [r.index for r in answer.rejected] == list(range(FEEDBACK_LIMIT))
    assert answer.ByteSize() < CLIENT_DEFAULT_RECEIVE // 2  # room to spare
    full = [r.reason for r in answer.rejected[:100]]
    assert full[0] == "label 10 is out of range: the model has 10 classes, valid labels are 0-9"
    assert all(f"label {10 + i} is out of range" in reason for i, reason in enumerate(full))
    assert {r.reason for r in answer.rejected[100:]} == {"same problem as item 0"}


def test_a_full_feedback_buffer_is_back_pressure_and_keeps_nothing_of_the_call(
    home: Path, tmp_path: Path
) -> None:
    # The buffer size comes from the server's traffic settings (KILN_TRAFFIC_*), as users set it.
    env = {"KILN_TRAFFIC_MAX_BUFFERED_ROWS": "100", "KILN_TRAFFIC_FLUSH_INTERVAL_S": "60"}
    own = tmp_path / "home"
    with kiln.registry.open(settings=Settings(home=own)) as registry:
        register(registry, tmp_path, "digits", seed=1)
    with (
        kiln_serve("digits", home=own, env={**ONE_THREAD, **env}) as served,
        grpc.insecure_channel(served.url) as ch,
    ):
        stub = feedback_pb2_grpc.FeedbackStub(ch)
        request = feedback_pb2.SubmitFeedbackBatchRequest(items=items([1] * 500))
        error = failure(lambda: stub.SubmitFeedbackBatch(request, timeout=30))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert "retry" in error.details() and "nothing of this call was kept" in error.details()
        assert ("grpc-retry-pushback-ms", "1000") in tuple(error.trailing_metadata() or ())
        kept = stub.SubmitFeedbackBatch(
            feedback_pb2.SubmitFeedbackBatchRequest(items=items([2] * 50)), timeout=30
        )
        assert kept.accepted == 50 and not kept.rejected
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0, served.output()[-2000:]
    stored = scan_feedback(own).frame.collect()
    assert stored.height == 50 and set(stored["label"]) == {2}
    assert set(stored["source"]) == {"grpc"}  # kiln serve says which transport carried them
