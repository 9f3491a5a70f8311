"""The frontend reads its listening socket's accept queue from the kernel (frontend.max_accept_queue)."""

from __future__ import annotations

import socket

from dynamo_cli.frontend.guard import AcceptQueue


def test_connections_not_yet_accepted_are_counted() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        q = AcceptQueue(server)
        assert q.length() == 0
        clients = [socket.create_connection(server.getsockname()) for _ in range(5)]
        try:
            assert q.length() == 5
            conn, _ = server.accept()
            conn.close()
            assert q.length() == 4
        finally:
            for c in clients:
                c.close()
