"""`kiln serve`'s HTTP options as users run them (subprocesses through
`kiln.serving.launcher.kiln_serve`): the ready line names the HTTP port and `--no-http` serves
gRPC only. (An HTTP port in use, exit 2 naming --http-port, is one of test_grpc_cli.py's
port-in-use cases.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http

from kiln.errors import Unavailable
from kiln.serving.launcher import kiln_serve
from tests.integration.grpc_harness import ONE_THREAD, OUTPUT, images
from tests.integration.http_harness import digits_home, http_input
from tests.integration.test_grpc_server import infer_input


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_home(tmp_path_factory.mktemp("http-cli"))


def test_the_ready_line_names_the_http_port_and_both_transports_answer(home: Path) -> None:
    x = images(2, seed=21)
    with kiln_serve("--models", "digits", home=home, env=ONE_THREAD) as served:
        port = served.http_port
        assert port is not None and port not in (served.port, served.metrics_port)
        assert f"grpc port {served.port}, http port {port}, metrics port " in served.line
        assert served.http_url == f"127.0.0.1:{port}"
        with triton_http.InferenceServerClient(served.http_url) as client:
            assert client.is_server_ready() and client.is_model_ready("digits")
            over_http = client.infer("digits", [http_input(x)]).as_numpy(OUTPUT)
        with triton.InferenceServerClient(served.url) as client:
            over_grpc = client.infer("digits", [infer_input(x)]).as_numpy(OUTPUT)
    np.testing.assert_array_equal(over_http, over_grpc)


def test_no_http_serves_grpc_only(home: Path) -> None:
    with kiln_serve("--models", "digits", home=home, env=ONE_THREAD, http=False) as served:
        assert "http port" not in served.line
        assert served.http_port is None
        with pytest.raises(Unavailable, match="--no-http"):
            served.http_url  # noqa: B018 (the property raises)
        with triton.InferenceServerClient(served.url) as client:
            assert client.is_model_ready("digits")
