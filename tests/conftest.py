"""Shared fixtures: the session's private JACK server."""

from __future__ import annotations

import os

import pytest

from jackserver import SERVER_NAME, JackError, JackServer, jackd_path

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_jackd() -> None:
    """Skip without jackd; under CI=true a missing jackd is a failure, not a skip."""
    if jackd_path() is None:
        msg = ("jackd is not installed: install jackd2 (Debian/Ubuntu: "
               "apt-get install --no-install-recommends jackd2; macOS: brew install jack), "
               "or run ./test.sh, which does")
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def jack_server_handle(tmp_path_factory):
    """The :class:`JackServer` of the session (started, or a live one reused)."""
    need_jackd()
    server = JackServer(SERVER_NAME, log_path=tmp_path_factory.mktemp("jack") / "jackd.log")
    saved = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    # The test process and every child it starts talk to our server, and never autostart one.
    os.environ["JACK_DEFAULT_SERVER"] = SERVER_NAME
    os.environ["JACK_NO_START_SERVER"] = "1"
    try:
        server.start()
    except JackError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def jack_server(jack_server_handle) -> str:
    """Name of a running JACK server; JACK_DEFAULT_SERVER points at it."""
    return jack_server_handle.name
