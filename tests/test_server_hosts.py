"""The running server refuses a DNS-rebinding Host: the websocket upgrade is answered 101 only when
the Host header names the loopback (.streamlit/config.toml's server.allowedHosts)."""
from __future__ import annotations

import base64
import os
import socket
from urllib.parse import urlparse

import pytest
from test_browser import streamlit_app


def _upgrade_status(url: str, host: str) -> int:
    """The HTTP status of a websocket upgrade of the app's stream with Host and Origin `host`."""
    port = urlparse(url).port
    request = (f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: http://{host}:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request.encode())
        status_line = conn.makefile("rb").readline().decode("latin-1")
    return int(status_line.split()[1]) if status_line.startswith("HTTP/") else 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {**os.environ, "PARAKNOW_CACHE": str(tmp_path_factory.mktemp("hosts-cache")),
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with streamlit_app(env) as url:
        yield url


def test_a_rebinding_host_is_refused_and_the_loopback_accepted(server):
    assert _upgrade_status(server, "127.0.0.1") == 101
    assert _upgrade_status(server, "localhost") == 101
    for host in ("evil.example", "127.0.0.1.evil.example", "attacker.localhost.example"):
        assert _upgrade_status(server, host) != 101, host
