"""The ``api-writes`` workload's clients: a process of their own (``bench.control``).

Role. A load generator that does not share the server's CPU and interpreter: run as
``python -m bench.api_client``, it reads a job as JSON on stdin, opens ``clients``
keep-alive HTTP/1.1 connections (``http.client``, one thread each, ``TCP_NODELAY``),
sends ``PUT`` requests back to back on each, and writes what every answer said as
JSON on stdout. It imports nothing of Portico's, so it starts in a blink.

Theory of operation. Each connection first sends ``warmup`` writes (untimed: the
server's first answers pay for imports and caches), then all of them start together
(a barrier) and write until ``seconds`` have passed or ``max_writes`` timed writes
were started, whichever comes first. Connection ``n`` sends bodies ``n, n + 1, ...``
modulo their count, so concurrent writers interleave different documents. An answer
is recorded as ``[status, revision (or the start of the text when not 200), body
index, seconds, timed]``; the caller checks them (``bench.control``).

Job::

    {"base": "http://127.0.0.1:PORT", "token": "...", "path": "/api/v1/tenants/b",
     "bodies": [{...}, {...}], "clients": 4, "warmup": 10, "seconds": 2.0,
     "max_writes": null}
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Send the job's writes; the answers, the timed run's seconds, and any failure."""
    where = urllib.parse.urlsplit(job["base"])
    bodies = [json.dumps(body).encode() for body in job["bodies"]]
    headers = {"Authorization": f"Bearer {job['token']}", "Content-Type": "application/json"}
    clients, warmup, seconds = int(job["clients"]), int(job["warmup"]), float(job["seconds"])
    limit = job.get("max_writes")
    began = [0.0]
    ready = threading.Barrier(clients + 1, action=lambda: began.__setitem__(0,
                                                                          time.perf_counter()))
    lock = threading.Lock()
    started = [0]  # timed writes begun, by every connection
    answers: list[list[Any]] = []
    ends: list[float] = []
    failures: list[str] = []

    def connection(n: int) -> None:
        mine: list[list[Any]] = []
        sent = n
        conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=30)

        def put(timed: bool) -> None:
            nonlocal sent
            body = sent % len(bodies)
            sent += 1
            start = time.perf_counter()
            conn.request("PUT", job["path"], bodies[body], headers)
            answer = conn.getresponse()
            data = answer.read()
            took = time.perf_counter() - start
            said = (json.loads(data).get("revision") if answer.status == 200
                    else data[:200].decode(errors="replace"))
            mine.append([answer.status, said, body, took, timed])

        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(warmup):
                put(False)
            ready.wait()
            while True:
                with lock:
                    if time.perf_counter() - began[0] >= seconds or (
                            limit is not None and started[0] >= limit):
                        break
                    started[0] += 1
                put(True)
        except threading.BrokenBarrierError:
            pass  # another connection failed: it says why
        except Exception as error:  # reported to the caller, who fails the run
            failures.append(f"connection {n}: {type(error).__name__}: {error}")
            ready.abort()
        finally:
            conn.close()
            with lock:
                answers.extend(mine)
                ends.append(time.perf_counter())

    threads = [threading.Thread(target=connection, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a connection failed: it says why
        ready.wait()
    for thread in threads:
        thread.join()
    return {"answers": answers, "seconds": max(ends) - began[0] if began[0] else 0.0,
            "failures": failures}


def main() -> None:
    json.dump(run(json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()
