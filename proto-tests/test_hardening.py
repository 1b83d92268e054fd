"""Bad input against a running proxy with the tee on: every connection that sends
nonsense is closed or answered within a bounded time, the proxy never panics, other
connections are not disturbed, limits hold, and a real client still works afterwards."""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path

import pytest

import harness
import teeutil
from harness import HOST

FUZZ_CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"


def _frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def _produce_v7(correlation_id: int, body_tail: bytes) -> bytes:
    """A Produce v7 request whose body after the header is `body_tail`."""
    return harness.encode_request(0, 7, correlation_id, body_tail)


def bad_frames() -> dict[str, bytes]:
    rng = random.Random(7)
    frames = {
        "unknown-api-key": harness.encode_request(999, 0, 1),
        "impossible-version": harness.encode_request(3, 99, 2, b"\x00" * 8),
        "negative-api-version": harness.encode_request(18, -3, 3),
        "produce-garbage-body": _produce_v7(4, b"\xff" * 40),
        "produce-huge-topic-count": _produce_v7(
            5, b"\xff\xff" + b"\x00\x01" + b"\x00\x00\x03\xe8" + struct.pack(">i", 2**31 - 1)),
        "produce-v13-topic-ids": harness.encode_request(0, 13, 6, b"\x00" * 30),
        "endtxn-truncated": harness.encode_request(26, 1, 7, b"\x00\x03ab"),
        "zero-length-frame": _frame(b""),
        "random-1": _frame(bytes(rng.randrange(256) for _ in range(300))),
        "random-2": bytes(rng.randrange(256) for _ in range(64)),
    }
    if FUZZ_CORPUS.is_dir():
        for i, p in enumerate(sorted(FUZZ_CORPUS.iterdir())[:20]):
            frames[f"corpus-{i}"] = _frame(p.read_bytes()[:4096])
    return frames


def _send_and_wait(port: int, data: bytes, timeout: float) -> tuple[bool, bytes]:
    """Sends `data`; returns (closed or answered within timeout, bytes received)."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(data)
        s.settimeout(0.2)
        got = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if got:
                    return True, bytes(got)  # answered with a Kafka frame
                continue
            except OSError:
                return True, bytes(got)
            if not chunk:
                return True, bytes(got)
            got += chunk
        return bool(got), bytes(got)


def test_bad_frame_corpus_against_running_proxy(dc1, dc2, proxy, tmp_path):
    cfg = tmp_path / "limits.toml"
    cfg.write_text("[proxy]\nmax_frame_bytes = 65536\nframe_read_timeout_ms = 1500\n")
    p = proxy(dc1.bootstrap, target=dc2.bootstrap, config=cfg)
    healthy = socket.create_connection((HOST, p.port), timeout=10)
    try:
        for name, data in bad_frames().items():
            done, _ = _send_and_wait(p.port, data, timeout=10)
            assert done, f"{name}: connection neither answered nor closed within 10 s"
            assert p.proc.poll() is None, f"proxy died on {name}"
        # Over the frame cap, and a frame whose bytes stop arriving mid-way.
        done, _ = _send_and_wait(p.port, struct.pack(">i", 65537) + b"\x00" * 10, 5)
        assert done, "oversized frame not refused"
        done, _ = _send_and_wait(p.port, struct.pack(">i", 100) + b"\x00\x12\x00\x00", 8)
        assert done, "stalled partial frame not closed"
        # The connection opened before all this still works.
        healthy.sendall(harness.api_versions_v0(42))
        corr, _ = harness.recv_frame(healthy)
        assert corr == 42
    finally:
        healthy.close()
    log = p.proc.log_text()
    assert "panicked" not in log, log[-3000:]
    assert "exceeds the 65536-byte cap" in log
    assert "mid-frame" in log
    # A real client still produces through the proxy, and the tee still replicates.
    topic = harness.unique("after-corpus")
    harness.create_topic(dc1.bootstrap, topic, partitions=1)
    res = harness.produce_confluent(p.bootstrap, topic, harness.make_records(20, "ok"))
    assert not res.errors, res.errors
    # Wait without asking for the topic by name: that would auto-create it in DC2.
    teeutil.wait_partitions(dc2.bootstrap, topic, timeout=30)
    got = harness.consume_confluent(dc2.bootstrap, topic, expected=20, timeout=30)
    harness.assert_same_records(res.acked, got, "DC2 after bad input")


def test_connection_limit(dc1, proxy, tmp_path):
    cfg = tmp_path / "conns.toml"
    cfg.write_text("[proxy]\nmax_connections = 3\n")
    p = proxy(dc1.bootstrap, config=cfg)
    held: list[socket.socket] = []
    deadline = time.monotonic() + 10
    # Three live sessions (a probe connection may still hold a slot for a moment).
    while len(held) < 3 and time.monotonic() < deadline:
        s = socket.create_connection((HOST, p.port), timeout=5)
        try:
            s.sendall(harness.api_versions_v0(len(held)))
            harness.recv_frame(s)
            held.append(s)
        except OSError:
            s.close()
            time.sleep(0.1)
    assert len(held) == 3
    try:
        with socket.create_connection((HOST, p.port), timeout=5) as extra:
            assert harness.wait_closed(extra, timeout=5) is not None, "4th connection kept open"
    finally:
        for s in held:
            s.close()
    # Freed slots are usable again.
    deadline = time.monotonic() + 5
    while True:
        with socket.create_connection((HOST, p.port), timeout=5) as s:
            s.sendall(harness.api_versions_v0(5))
            try:
                corr, _ = harness.recv_frame(s)
                assert corr == 5
                break
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.2)
    assert "connection limit reached" in p.proc.log_text()


def test_key_material_never_printed(dc1, kafka_tee_bin, tmp_path):
    """A broken private key file is reported by its path, never by its contents."""
    secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7secretkeymaterial"
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    key.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    argv = [str(kafka_tee_bin), "--listen", f"{HOST}:{harness.free_port()}",
            "--source", dc1.bootstrap, "--tls-cert", str(cert), "--tls-key", str(key)]
    r = harness.run_proxy_expecting_exit(argv)
    out = (r.stdout or "") + (r.stderr or "")
    assert r.returncode != 0, out
    assert str(cert) in out or str(key) in out, out
    assert secret not in out and "secretkeymaterial" not in out, out
