"""A real uvicorn server on a loopback port: the body limit counts bytes as they arrive, and errors keep the connection.

Chunked bodies of 80 MB and 200 MB used to be accepted (the limit only read Content-Length) and
grew the server by 600 MB; after a 500 the keep-alive connection was reset. Here a streamed body
stops near the limit (the client cannot push much past it), and a connection carries good and bad
requests alike, answered in order.
"""

from __future__ import annotations

import json
import socket

import pytest

from mtlkit.serve import create_app

from serving_runs import holdout, shared_run
from test_serve import json_rows, running

LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data, run_dir = shared_run(tmp_path_factory, "mmoe_sequence")
    with running(create_app(run_dir, max_body_bytes=LIMIT, threads=1)) as client:
        yield client, json_rows(holdout(data).slice(0, 2))


def test_a_chunked_body_stops_at_the_limit(server):
    client, _ = server
    sent = [0]

    def body():  # 200 MB, chunked (no Content-Length): the server must count what arrives
        chunk = b" " * 65536
        for _ in range(200 * 16):
            sent[0] += len(chunk)
            yield chunk

    response = client.post("/predict", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["detail"].startswith(f"request body exceeds the limit of {LIMIT} bytes (stopped reading at ")
    assert response.headers["connection"] == "close"
    assert sent[0] < 20 * LIMIT  # the server stopped reading: the client could not push the 200 MB


def _exchange(sock: socket.socket, body: bytes, headers: str = "") -> tuple[int, dict]:
    """One request on an open connection; (status, JSON answer)."""
    head = f"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{headers}"
    sock.sendall(head.encode() + (f"content-length: {len(body)}\r\n" if "content-length" not in headers else "").encode() + b"\r\n" + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    header, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in header.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(header.split(b" ")[1]), json.loads(rest[:length])


def test_errors_keep_the_connection_alive(server):
    """Bodies that were 500s (and reset the connection) and other bad ones, then good ones, on one connection."""
    client, rows = server
    good = json.dumps({"rows": rows}).encode()
    bodies = [
        (b'{"rows": [{"user": "\\ud800x"}]}', 422),  # a lone surrogate
        (good, 200),
        (b'{"rows": [{"item": ' + b"9" * 5000 + b"}]}", 400),  # a 5,000-digit number
        (json.dumps({"rows": [{**rows[0], "item": 10**400}]}).encode(), 422),  # a 400-digit one
        (b"[" * 100_000, 400),  # nested 100k deep
        (good, 200),
        (b"{", 400),
        (good, 200),
    ]
    with socket.create_connection(("127.0.0.1", client.base_url.port), timeout=20) as sock:
        answers = [_exchange(sock, body) for body, _ in bodies]
    assert [status for status, _ in answers] == [status for _, status in bodies]
    assert answers[1][1] == answers[5][1] == answers[7][1]  # the same rows, the same predictions


def test_a_declared_length_over_the_limit_is_refused_before_reading(server):
    client, _ = server
    with socket.create_connection(("127.0.0.1", client.base_url.port), timeout=20) as sock:
        status, answer = _exchange(sock, b"", headers=f"content-length: {200 * LIMIT}\r\n")
    assert status == 413
    assert answer["detail"] == f"request body of {200 * LIMIT} bytes exceeds the limit of {LIMIT} bytes: split the request"
