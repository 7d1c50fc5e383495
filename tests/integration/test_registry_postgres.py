"""The registry on PostgreSQL: what only a server database does (connections that fail, a
server that restarts). Everything both back-ends share runs in the `both_registries` tests."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

import kiln.registry
from kiln.errors import InvalidArgument, RegistryUnavailable, Unavailable
from kiln.settings import Settings
from tests.postgres import PostgresServer


def _open(url: str, home: Path) -> kiln.registry.Registry:
    return kiln.registry.open(settings=Settings(home=home, registry_url=url))


def test_a_server_that_is_not_there_is_a_clear_error_in_seconds(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable) as err:
            _open(f"postgresql+psycopg://kiln:hunter2@127.0.0.1:{port}/kiln", tmp_path)
    message = err.value.message
    assert f"127.0.0.1:{port}" in message and "Connection refused" in message
    assert "hunter2" not in message and "***" in message  # the password is never shown
    assert "KILN_REGISTRY_URL" in message
    assert time.monotonic() - started < 120  # bounded by the retry-free path, not a hang


def test_a_database_that_does_not_exist_is_named(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = f"postgresql+psycopg://kiln@127.0.0.1:{postgres_server.port}/no_such_registry"
    with pytest.raises(RegistryUnavailable, match='database "no_such_registry" does not exist'):
        _open(url, tmp_path)


@pytest.mark.parametrize(
    ("url", "error", "fragment"),
    [
        ("not a database url", InvalidArgument, "is not a database URL"),
        ("mysql://kiln:pw@db/kiln", InvalidArgument, "runs on SQLite (sqlite:///PATH) or Postgr"),
        ("postgresql+psycopg2://kiln@127.0.0.1/kiln", Unavailable, "pip install 'kiln[postgres]'"),
    ],
)
def test_urls_kiln_cannot_use_say_what_it_takes(
    tmp_path: Path, url: str, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as raised:
        _open(url, tmp_path)
    assert fragment in str(raised.value)


def test_the_registry_carries_on_after_the_server_restarts(tmp_path: Path) -> None:
    # A serving replica holds its registry for days: a PostgreSQL restart in between must
    # cost it nothing but the requests made while the server is down.
    if not PostgresServer.available():
        pytest.skip("PostgreSQL is not installed here (no initdb)")
    server = PostgresServer.start()
    try:
        url = server.new_database()
        checkpoint = tmp_path / "model.safetensors"
        checkpoint.write_bytes(os.urandom(64))
        with _open(url, tmp_path / "home") as registry:
            registry.register_version("digits", checkpoint=checkpoint, config={}, metrics={})
            server.restart()
            assert [v.version for v in registry.list_versions("digits")] == [1]
            again = registry.register_version(
                "digits", checkpoint=checkpoint, config={}, metrics={}
            )
            assert again.version == 2
    finally:
        server.stop()
