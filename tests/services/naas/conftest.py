"""Shared by the NaaS tests: a real etcd, storms in real processes, and portico-cni as a runtime
finds it.

* ``etcd``: a real etcd, ``tests/conftest.py``'s.
* ``storms``: starts ``storm.py`` processes (an allocator in a process of its
  own, one JSON line per acknowledged answer), reads their lines in threads,
  and kills whatever is left at the end of the test.
* ``disjoint``: the overlap check every test uses. It looks at ports, not at
  slot numbers: for each address, the port runs of every allocation, sorted,
  must not touch each other, whatever the allocator thinks its slots are.
* ``cni_path``: a directory holding an executable ``portico-cni`` the way pip
  installs the console script (a Python script calling
  ``portico.services.naas.cni:main``), for ``CNI_PATH``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

STORM = Path(__file__).with_name("storm.py")


Runs = Sequence[tuple[int, int]]


def check_disjoint(allocations: Iterable[tuple[str, Runs]]) -> int:
    """Assert no two allocations share a port of an address; the number checked."""
    by_address: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    count = 0
    for n, (address, runs) in enumerate(allocations):
        count += 1
        for first, last in runs:
            assert 0 <= first <= last <= 0xFFFF, (address, first, last)
            by_address[address].append((first, last, n))
    for address, held in by_address.items():
        held.sort()
        for (_, last, a), (first, _, b) in zip(held, held[1:], strict=False):
            assert first > last, f"{address}: allocations {a} and {b} overlap at port {first}"
    return count


@pytest.fixture
def disjoint() -> Callable[[Iterable[tuple[str, Runs]]], int]:
    return check_disjoint


class Storm:
    """A ``storm.py`` process and the lines it printed so far (read by a thread)."""

    def __init__(self, store: str, pool: str, prefix: str, count: int, *,
                 block_size: int = 4096, release_every: int = 0) -> None:
        self.prefix = prefix
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(STORM), "--store", store, "--pool", pool, "--prefix", prefix,
             "--count", str(count), "--block-size", str(block_size),
             "--release-every", str(release_every)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:  # a line cut by kill -9 was never acknowledged
                break

    def count(self, event: str) -> int:
        """Lines of ``event`` so far; AssertionError with its stderr if the process died."""
        if self.proc.poll() is not None and self.proc.returncode != 0:
            stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"storm {self.prefix} exited with {self.proc.returncode}:\n"
                                 f"{stderr[-3000:]}")
        return sum(1 for line in list(self.lines) if line["event"] == event)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)

    def finish(self, timeout: float) -> None:
        """Wait for the process to end by itself; its stderr in the failure if it fails."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"storm {self.prefix} did not finish in {timeout} s") from None
        self._reader.join(timeout=30)
        stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
        assert self.proc.returncode == 0, f"storm {self.prefix} failed:\n{stderr[-3000:]}"

    def held(self) -> dict[str, dict[str, Any]]:
        """The allocations it was told it holds: container -> its "allocated" line."""
        held: dict[str, dict[str, Any]] = {}
        for line in self.lines:
            if line["event"] == "allocated":
                held[line["container_id"]] = line
            elif line["event"] == "released":
                held.pop(line["container_id"], None)
        return held

    def released(self) -> set[str]:
        return {line["container_id"] for line in self.lines if line["event"] == "released"}


@pytest.fixture
def storms() -> Iterator[Callable[..., Storm]]:
    started: list[Storm] = []

    def start(*args: Any, **kwargs: Any) -> Storm:
        storm = Storm(*args, **kwargs)
        started.append(storm)
        return storm

    yield start
    for storm in started:
        storm.kill()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def until() -> Callable[[Callable[[], bool], float, str], None]:
    return wait_until


@pytest.fixture(scope="session")
def cni_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with an executable ``portico-cni``, as pip writes console scripts."""
    folder = tmp_path_factory.mktemp("cni-bin")
    script = folder / "portico-cni"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      "from portico.services.naas.cni import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")
    script.chmod(0o755)
    return folder

