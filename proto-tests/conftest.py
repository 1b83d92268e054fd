"""Pytest fixtures: Tansu brokers (dc1, dc2) and the kafka-tee proxy, each started per
test on free 127.0.0.1 ports and stopped by pid at teardown. Logs of every process a
failed test started are attached to its report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import teeutil  # noqa: E402
from harness import HOST  # noqa: E402
from relay import Relay  # noqa: E402

_PROCS = pytest.StashKey[list]()


def _register(request, proc: harness.Proc) -> None:
    request.node.stash.setdefault(_PROCS, []).append(proc)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for proc in item.stash.get(_PROCS, []):
            report.sections.append((f"log of {proc.name} (pid {proc.popen.pid if proc.popen else '?'})",
                                    proc.log_tail(200)))
    return report


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir(exist_ok=True)
    return d


def _factory(request, start):
    """The body of a factory fixture: yields a function that starts one more process
    with `start(n, *args, **kwargs)` (n: how many it started before) and returns what
    that returns (a Broker or a Proxy); their logs go to a failed test's report, and
    they are stopped at teardown, in start order."""
    started: list = []

    def start_one(*args, **kwargs):
        p = start(len(started), *args, **kwargs)
        _register(request, p.proc)
        started.append(p)
        return p

    yield start_one
    for p in started:
        p.stop()


@pytest.fixture
def tansu(request, logdir):
    """Factory: tansu("dc1") starts a broker for that cluster id and returns a Broker."""
    yield from _factory(request, lambda _n, name: harness.start_tansu(name, logdir))


@pytest.fixture
def dc1(tansu) -> harness.Broker:
    return tansu("dc1")


@pytest.fixture
def dc2(tansu) -> harness.Broker:
    return tansu("dc2")


@pytest.fixture(scope="session")
def kafka_tee_bin() -> Path:
    path = harness.kafka_tee_bin()
    if not path.is_file():
        pytest.fail(f"{path} does not exist: run `cargo build` first (or set KAFKA_TEE_BIN)",
                    pytrace=False)
    return path


@pytest.fixture
def proxy(request, logdir, kafka_tee_bin):
    """Factory: proxy(dc1.bootstrap, target=..., admin=True, state_dir=..., extra=[...])
    starts kafka-tee and returns a harness.Proxy; stopped (SIGTERM, then SIGKILL) at
    teardown."""
    def start(n: int, source: str, **kwargs) -> harness.Proxy:
        kwargs.setdefault("name", f"kafka-tee-{n}" if n else "kafka-tee")
        return harness.start_proxy(source, logdir, **kwargs)

    yield from _factory(request, start)


def _relayed_tansu(request, logdir, name: str):
    """The body of the relayed_* fixtures: yields (broker, relay), a Tansu broker
    that listens on its own port but advertises the relay's, so that every connection
    a client makes after reading metadata goes through the relay."""
    relay_port = harness.free_port()
    broker_port = harness.free_port()
    relay = Relay((HOST, broker_port), relay_port).start()
    broker = teeutil.start_tansu_at(name, logdir, broker_port, advertised_port=relay_port)
    _register(request, broker.proc)
    yield broker, relay
    relay.stop()
    broker.stop()


@pytest.fixture
def relayed_dc1(request, logdir):
    """A DC1 Tansu broker behind a relay (advertised at the relay's port)."""
    yield from _relayed_tansu(request, logdir, "dc1")


@pytest.fixture
def relayed_dc2(request, logdir):
    """A DC2 Tansu broker behind a relay: it listens on its own port but advertises
    the relay's, so every DC2 connection the proxy makes goes through the relay."""
    yield from _relayed_tansu(request, logdir, "dc2")
