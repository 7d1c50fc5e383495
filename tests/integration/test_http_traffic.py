"""Traffic logging and feedback over HTTP, into the real Parquet store (`TrafficSink`, as
`kiln serve` runs it): every HTTP infer is one row with transport "http", feedback posted to
`/v2/models/NAME/feedback` is stored with source "http", and the two join in
`kiln.evaluate.evaluate_traffic` (test_traffic_serving.py's checks, over REST)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from kiln.evaluate import evaluate_traffic
from kiln.serving.traffic_hook import TrafficSink
from kiln.traffic import TrafficSettings, Window, scan_feedback, scan_traffic
from tests.integration.grpc_harness import OUTPUT, images, running_server
from tests.integration.http_harness import (
    INFER,
    assert_error,
    digits_home,
    http_input,
    json_request,
    logits,
    plain_client,
)
from tests.integration.test_grpc_server import infer_input

FEEDBACK = "/v2/models/digits/feedback"
JSON = {"content-type": "application/json"}


def test_http_requests_are_rows_and_http_feedback_joins(tmp_path: Path) -> None:
    home = digits_home(tmp_path)
    answers: dict[str, int] = {}
    sink = TrafficSink(home, TrafficSettings(flush_interval_s=60), feedback_source="grpc")
    try:
        with running_server(home, hooks=False, sink=sink) as server:
            with triton_http.InferenceServerClient(server.http_url) as client:
                for i in range(8):
                    result = client.infer(
                        "digits", [http_input(images(1, seed=i))], request_id=f"h{i}"
                    )
                    answers[f"h{i}"] = int(result.as_numpy(OUTPUT)[0].argmax())
                for i in range(2):  # wrong shape: refused, and logged as such
                    with pytest.raises(InferenceServerException):
                        client.infer(
                            "digits",
                            [http_input(np.zeros((1, 5), np.float32))],
                            request_id=f"bad{i}",
                        )
            with server.client() as grpc_client:
                grpc_client.infer("digits", [infer_input(images(1))], request_id="over-grpc")
            with plain_client(server) as plain:
                answer = plain.post(INFER, json=json_request(images(1, seed=50))).json()
                assigned = answer["id"]  # no id sent: the server's, for the feedback below
                answers[assigned] = int(logits(answer)[0].argmax())
                # A lone surrogate (JSON allows the escape) has no UTF-8: as an id it would make
                # the rows written with it unwritable, so it is refused before it is one.
                unwritable = json.dumps(json_request(images(1), request_id="\ud800")).encode()
                assert_error(plain.post(INFER, content=unwritable), 400, "lone UTF-16 surrogate")
                single = plain.post(FEEDBACK, json={"request_id": "h0", "label": answers["h0"]})
                assert single.json() == {"accepted": 1, "rejected": []}
                assert_error(plain.post(FEEDBACK, json={"label": 3}), 400, "`request_id` must be")
                items = [
                    {"request_id": "h1", "label": answers["h1"]},
                    {"request_id": "h2", "label": (answers["h2"] + 1) % 10},  # a wrong answer
                    {"request_id": 17, "label": 1},  # malformed: refused alone
                    {"request_id": assigned, "label": answers[assigned]},
                    {"request_id": "h3", "label": -1},  # the core's own check: refused alone
                    {"request_id": "\udc00", "label": 1},  # no UTF-8 form: refused alone
                ]
                batch_body = json.dumps({"items": items}).encode()
                batch = plain.post(FEEDBACK, content=batch_body, headers=JSON).json()
    finally:
        assert sink.close(60)
    assert batch["accepted"] == 3
    reasons = {r["index"]: r["reason"] for r in batch["rejected"]}
    assert sorted(reasons) == [2, 4, 5]
    assert "`request_id` must be the string id of a response" in reasons[2]
    assert "negative" in reasons[4]
    assert "`request_id` must be the string id of a response" in reasons[5]

    window = Window(
        datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(minutes=1)
    )
    rows = scan_traffic(home, "digits", window).frame.collect()
    assert rows.height == 12  # one row per request, failures included
    http = rows.filter(pl.col("transport") == "http")
    assert set(http["request_id"]) == {*answers, "bad0", "bad1"} and http.height == 11
    assert rows.filter(pl.col("transport") == "grpc")["request_id"].to_list() == ["over-grpc"]
    ok = http.filter(pl.col("status") == "ok")
    by_id = dict(zip(ok["request_id"], ok["prediction"], strict=True))
    assert by_id == answers
    bad = http.filter(pl.col("status") != "ok")
    assert set(bad["status"]) == {"invalid_argument"} and bad["error"].null_count() == 0

    feedback = scan_feedback(home, window).frame.collect().sort("request_id")
    assert feedback["source"].to_list() == ["http"] * 4
    assert set(feedback["request_id"]) == {"h0", "h1", "h2", assigned}
    report = evaluate_traffic(home, "digits", window, {}).to_dict()
    assert report["labelled"] == 4 and report["feedback"]["unmatched"] == 0
    (primary,) = [a for a in report["accuracy"] if a["version"] == 1]
    assert primary["accuracy"] == pytest.approx(3 / 4)
