"""A SASL-terminating gate for tests: the server side of Kafka's SASL exchange in front
of a plain (unauthenticated) broker, so real clients with SASL_PLAINTEXT can be tested
against a Tansu build that cannot hold SASL users.

Runs an asyncio loop in a background thread of the test process (like relay.py). Per
accepted connection, before authentication it reads Kafka frames itself:

- ApiVersions (any version) goes to an upstream connection opened for this client and
  the one response frame comes back unchanged (the broker advertises the SASL APIs);
- SaslHandshake v0/v1 is answered by the gate (error 33 and the enabled mechanisms if
  the asked one is not enabled, then the connection is closed, as Kafka does);
- SaslAuthenticate v0-v2 (after a v1 handshake), or raw length-prefixed tokens (after a
  v0 handshake), carry the PLAIN or SCRAM-SHA-256/512 exchange (RFC 4616, RFC 5802 /
  RFC 7677 without channel binding, as Kafka does it). A refused login gets error 58
  (SASL_AUTHENTICATION_FAILED) and the connection is closed;
- any other request before a successful login closes the connection (as Kafka does).

After a successful login the gate only relays bytes both ways between the client and
its upstream connection until either side closes. Everything binds 127.0.0.1.
Passwords are never printed. Bad input closes only the connection it came on.

Usable on its own too: `python3 saslgate.py LISTEN_PORT UPSTREAM_HOST:PORT USER:PASSWORD`
(more USER:PASSWORD arguments add users).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
import struct
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

from harness import uvarint
from loopserver import HOST, LoopServer
CHUNK = 64 * 1024
# Kafka's sasl.server.max.receive.size: the largest frame accepted before a login.
MAX_PRE_AUTH_FRAME = 512 * 1024
MAX_RESPONSE_FRAME = 64 * 1024 * 1024
UPSTREAM_TIMEOUT = 10.0

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36

ERR_UNSUPPORTED_SASL_MECHANISM = 33
ERR_SASL_AUTHENTICATION_FAILED = 58
FAILED_MESSAGE = "Authentication failed: invalid credentials"

SCRAM_ITERATIONS = 4096
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MECHANISMS = ("PLAIN", *SCRAM_HASHES)


class _Malformed(Exception):
    """A frame or SASL message that cannot be parsed, or a request out of order."""


class _Refused(Exception):
    """A login refused: wrong credentials, unknown user, bad SCRAM message."""

    def __init__(self, user: str | None, reason: str):
        super().__init__(reason)
        self.user = user
        self.reason = reason


# ------------------------------------------------------------------ wire helpers


class KafkaReader:
    """Reads Kafka primitive types from a request; short input is _Malformed."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed(f"need {n} bytes at {self.pos} of {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise _Malformed("varint too long")

    def string(self) -> str | None:
        n = self.int16()
        if n == -1:
            return None
        return self._text(self.take(n))

    def bytes32(self) -> bytes:
        n = self.int32()
        if n < 0:
            raise _Malformed("null bytes")
        return self.take(n)

    def compact_bytes(self) -> bytes:
        n = self.uvarint()
        if n == 0:
            raise _Malformed("null compact bytes")
        return self.take(n - 1)

    def tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())

    @staticmethod
    def _text(raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Malformed("string is not UTF-8") from e


def _frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def _str16(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def handshake_response(corr: int, error: int, mechanisms: Sequence[str]) -> bytes:
    """SaslHandshake v0/v1 response frame (response header v0)."""
    body = struct.pack(">ihi", corr, error, len(mechanisms))
    body += b"".join(_str16(m) for m in mechanisms)
    return _frame(body)


def authenticate_response(corr: int, version: int, error: int, message: str | None,
                          auth_bytes: bytes, session_lifetime_ms: int = 0) -> bytes:
    """SaslAuthenticate v0-v2 response frame (session_lifetime_ms from v1 on)."""
    if version >= 2:  # flexible: response header v1, compact types, tagged fields
        msg = b"\x00" if message is None else uvarint(len(message.encode()) + 1) \
            + message.encode()
        body = (struct.pack(">i", corr) + b"\x00" + struct.pack(">h", error) + msg
                + uvarint(len(auth_bytes) + 1) + auth_bytes
                + struct.pack(">q", session_lifetime_ms) + b"\x00")
        return _frame(body)
    msg = struct.pack(">h", -1) if message is None else _str16(message)
    body = (struct.pack(">ih", corr, error) + msg + struct.pack(">i", len(auth_bytes))
            + auth_bytes)
    if version >= 1:
        body += struct.pack(">q", session_lifetime_ms)
    return _frame(body)


# ------------------------------------------------------------------------ SASL


class _ScramCredential(NamedTuple):
    salt: bytes
    stored_key: bytes
    server_key: bytes


def scram_credential(hash_name: str, password: str, salt: bytes,
                     iterations: int = SCRAM_ITERATIONS) -> _ScramCredential:
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    return _ScramCredential(salt, hashlib.new(hash_name, client_key).digest(), server_key)


_SASLNAME_ESCAPE = re.compile(r"=(2C|3D)|=")


def _saslname(raw: str) -> str:
    """Decodes a SCRAM saslname (=2C is ',' and =3D is '='; any other '=' is bad)."""
    def sub(m: re.Match) -> str:
        if m.group(1) is None:
            raise _Malformed("bad '=' escape in SCRAM name")
        return "," if m.group(1) == "2C" else "="

    return _SASLNAME_ESCAPE.sub(sub, raw)


class _Exchange:
    """One login attempt with one mechanism: `step(token)` returns the server's reply
    token and sets `user` once the login succeeded; raises _Refused otherwise."""

    def __init__(self, gate: "SaslGate", mechanism: str):
        self.gate = gate
        self.mechanism = mechanism
        self.user: str | None = None  # set once authenticated
        self.claimed: str | None = None  # the user name the client gave
        self._stage = 0
        self._scram: dict = {}

    def step(self, token: bytes) -> bytes:
        if self.mechanism == "PLAIN":
            return self._plain(token)
        if self._stage == 0:
            self._stage = 1
            return self._scram_first(token)
        if self._stage == 1:
            self._stage = 2
            return self._scram_final(token)
        raise _Refused(self.claimed, "SCRAM message after the exchange ended")

    def _plain(self, token: bytes) -> bytes:
        parts = token.split(b"\x00")
        if len(parts) != 3:
            raise _Refused(None, "malformed PLAIN token")
        try:
            authzid, user, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise _Refused(None, "PLAIN token is not UTF-8") from None
        self.claimed = user or None
        if not user:
            raise _Refused(None, "empty user name")
        if authzid and authzid != user:
            raise _Refused(user, "authorization id differs from user name")
        known = self.gate._users.get(user)
        if known is None:
            raise _Refused(user, "unknown user")
        if not hmac.compare_digest(known.encode(), password.encode()):
            raise _Refused(user, "wrong password")
        self.user = user
        return b""

    def _scram_first(self, token: bytes) -> bytes:
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(None, "SCRAM client-first is not UTF-8") from None
        if not text.startswith("n,"):
            # "y" or "p=": channel binding, which Kafka does not support either
            raise _Refused(None, "unsupported SCRAM gs2 header")
        end = text.find(",", 2)
        if end < 0:
            raise _Refused(None, "malformed SCRAM client-first")
        gs2, authz, bare = text[:end + 1], text[2:end], text[end + 1:]
        attrs = bare.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise _Refused(None, "malformed SCRAM client-first")
        try:
            user = _saslname(attrs[0][2:])
            authzid = _saslname(authz[2:]) if authz.startswith("a=") else None
        except _Malformed:
            raise _Refused(None, "malformed SCRAM name") from None
        if authz and authzid is None:
            raise _Refused(None, "malformed SCRAM gs2 header")
        self.claimed = user or None
        cnonce = attrs[1][2:]
        if not user or not cnonce:
            raise _Refused(self.claimed, "malformed SCRAM client-first")
        if authzid and authzid != user:
            raise _Refused(user, "authorization id differs from user name")
        cred = self.gate._scram_credential(self.mechanism, user)
        nonce = cnonce + secrets.token_urlsafe(18)
        server_first = (f"r={nonce},s={base64.b64encode(cred.salt).decode()},"
                        f"i={SCRAM_ITERATIONS}")
        self._scram = dict(user=user, known=user in self.gate._users, cred=cred,
                           gs2=gs2, bare=bare, nonce=nonce, server_first=server_first)
        return server_first.encode()

    def _scram_final(self, token: bytes) -> bytes:
        s = self._scram
        user = s["user"]
        hash_name = SCRAM_HASHES[self.mechanism]
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(user, "SCRAM client-final is not UTF-8") from None
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise _Refused(user, "SCRAM client-final without proof")
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise _Refused(user, "malformed SCRAM client-final")
        if attrs[0][2:] != base64.b64encode(s["gs2"].encode()).decode():
            raise _Refused(user, "SCRAM channel binding differs from the gs2 header")
        if attrs[1][2:] != s["nonce"]:
            raise _Refused(user, "SCRAM nonce mismatch")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise _Refused(user, "SCRAM proof is not base64") from None
        cred: _ScramCredential = s["cred"]
        if len(proof) != len(cred.stored_key):
            raise _Refused(user, "SCRAM proof has the wrong length")
        auth_message = f"{s['bare']},{s['server_first']},{without_proof}".encode()
        signature = hmac.new(cred.stored_key, auth_message, hash_name).digest()
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        ok = hmac.compare_digest(hashlib.new(hash_name, client_key).digest(),
                                 cred.stored_key)
        if not s["known"]:
            raise _Refused(user, "unknown user")
        if not ok:
            raise _Refused(user, "wrong password")
        self.user = user
        server_sig = hmac.new(cred.server_key, auth_message, hash_name).digest()
        return b"v=" + base64.b64encode(server_sig)


# ------------------------------------------------------------------------ gate


class SaslGate(LoopServer):
    thread_name = "saslgate"

    """The gate; see the module docstring. Read-only from the outside (appended to by
    the gate's thread): `authenticated` [(user, mechanism)], `failures` [(user or None,
    mechanism, reason)], `refused_unauthenticated` and `malformed` (connections closed),
    `pre_auth_requests` [(api key, api version)] of every request read before a login,
    `errors` (unexpected exceptions; should stay empty)."""

    def __init__(self, upstream: tuple[str, int], users: dict[str, str],
                 mechanisms: Sequence[str] = MECHANISMS, listen_port: int = 0,
                 listen_host: str = HOST, verbose: bool = False):
        unknown = [m for m in mechanisms if m not in MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported mechanisms {unknown}; known: {MECHANISMS}")
        super().__init__(listen_host, listen_port)
        self.upstream = upstream
        self.mechanisms = tuple(mechanisms)
        self.verbose = verbose
        self.authenticated: list[tuple[str, str]] = []
        self.failures: list[tuple[str | None, str, str]] = []
        self.refused_unauthenticated = 0
        self.malformed = 0
        self.accepted = 0
        self.pre_auth_requests: list[tuple[int, int]] = []
        self.errors: list[str] = []
        # KIP-368: a lifetime granted at login (SaslAuthenticate v1+); the gate closes a
        # connection when it ends. 0: sessions never end.
        self.session_lifetime_ms = 0
        self.expired_sessions = 0
        self._users = dict(users)
        self._secret = os.urandom(32)  # fake salts for unknown users
        self._creds: dict[tuple[str, str], _ScramCredential] = {}
        for mech in self.mechanisms:
            if mech in SCRAM_HASHES:
                for user, password in self._users.items():
                    self._creds[(mech, user)] = scram_credential(
                        SCRAM_HASHES[mech], password, os.urandom(16))
        self._tasks: set[asyncio.Task] = set()

    def __repr__(self) -> str:
        return (f"SaslGate({self.listen_host}:{self.port} -> {self.upstream[0]}:"
                f"{self.upstream[1]}, users={sorted(self._users)}, "
                f"mechanisms={list(self.mechanisms)})")

    @property
    def bootstrap(self) -> str:
        return f"{self.listen_host}:{self.port}"

    # ---------------------------------------------------------------- control

    def connections(self) -> int:
        return len(self._tasks)

    def set_password(self, user: str, password: str) -> None:
        """Adds a user or changes its password (as an operator would on a broker);
        logins from then on use it. Thread-safe: runs on the gate's loop."""
        def apply() -> None:
            self._users[user] = password
            for mech in self.mechanisms:
                if mech in SCRAM_HASHES:
                    self._creds[(mech, user)] = scram_credential(
                        SCRAM_HASHES[mech], password, os.urandom(16))

        if self._loop is None:
            apply()
        elif not self._call(apply):
            raise TimeoutError("SASL gate did not apply the new password")

    # ------------------------------------------------------------- internals

    def _scram_credential(self, mechanism: str, user: str) -> _ScramCredential:
        cred = self._creds.get((mechanism, user))
        if cred is not None:
            return cred
        # Unknown user: a stable fake salt and keys nobody can match, so the exchange
        # looks the same as for a known user until the final message fails.
        h = SCRAM_HASHES[mechanism]
        fake = hmac.new(self._secret, f"{mechanism}\0{user}".encode(), h).digest()
        return _ScramCredential(fake[:16], hashlib.new(h, fake).digest(), fake)

    def _note(self, text: str) -> None:
        if self.verbose:
            print(f"saslgate {self.port}: {text}", file=sys.stderr, flush=True)

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = _Conn(self, reader, writer)
        try:
            await conn.run()
        except _Malformed as e:
            self.malformed += 1
            self._note(f"closed a connection: {e}")
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001 - one connection, never the gate
            self.errors.append(f"{type(e).__name__}: {e}")
            self._note(f"internal error: {type(e).__name__}: {e}")
        finally:
            conn.close()
            self._tasks.discard(task)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


class _Conn:
    def __init__(self, gate: SaslGate, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.gate = gate
        self.reader = reader
        self.writer = writer
        self.up_reader: asyncio.StreamReader | None = None
        self.up_writer: asyncio.StreamWriter | None = None
        self.exchange: _Exchange | None = None
        self.handshake_version: int | None = None

    async def run(self) -> None:
        while True:
            payload = await self._read_frame()
            if payload is None:
                return
            if self.handshake_version == 0:
                if not await self._raw_token(payload):
                    return
            elif not await self._request(payload):
                return
            if self.exchange is not None and self.exchange.user is not None:
                break
        await self._relay()

    async def _read_frame(self) -> bytes | None:
        try:
            head = await self.reader.readexactly(4)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise _Malformed("truncated frame length") from None
            return None
        (n,) = struct.unpack(">i", head)
        if n <= 0 or n > MAX_PRE_AUTH_FRAME:
            raise _Malformed(f"frame length {n} before authentication")
        return await self.reader.readexactly(n)

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _request(self, payload: bytes) -> bool:
        """Handles one framed request before a login; False closes the connection."""
        r = KafkaReader(payload)
        api_key, version, corr = r.int16(), r.int16(), r.int32()
        self.gate.pre_auth_requests.append((api_key, version))
        if api_key == API_VERSIONS:
            await self._forward(payload)
            return True
        if api_key == SASL_HANDSHAKE:
            return await self._handshake(r, version, corr)
        if api_key == SASL_AUTHENTICATE:
            if self.handshake_version != 1 or self.exchange is None:
                raise _Malformed("SaslAuthenticate without a v1 SaslHandshake")
            if version > 2:
                raise _Malformed(f"SaslAuthenticate v{version}")
            r.string()  # client id
            if version >= 2:
                r.tagged_fields()
                token = r.compact_bytes()
                r.tagged_fields()
            else:
                token = r.bytes32()
            reply = self._step(token)
            if reply is None:
                await self._send(authenticate_response(
                    corr, version, ERR_SASL_AUTHENTICATION_FAILED, FAILED_MESSAGE, b""))
                return False
            await self._send(authenticate_response(corr, version, 0, None, reply,
                                                   self.gate.session_lifetime_ms))
            return True
        self.gate.refused_unauthenticated += 1
        self.gate._note(f"closed a connection that sent api key {api_key} before a login")
        return False

    async def _handshake(self, r: KafkaReader, version: int, corr: int) -> bool:
        if version > 1:
            raise _Malformed(f"SaslHandshake v{version}")
        if self.handshake_version is not None:
            raise _Malformed("second SaslHandshake")
        r.string()  # client id
        mechanism = r.string() or ""
        enabled = self.gate.mechanisms
        if mechanism not in enabled:
            self.gate.failures.append((None, mechanism, "unsupported mechanism"))
            self.gate._note(f"refused mechanism {mechanism!r}")
            await self._send(handshake_response(corr, ERR_UNSUPPORTED_SASL_MECHANISM,
                                                enabled))
            return False
        self.handshake_version = version
        self.exchange = _Exchange(self.gate, mechanism)
        await self._send(handshake_response(corr, 0, enabled))
        return True

    async def _raw_token(self, token: bytes) -> bool:
        """A token after a v0 handshake: no Kafka header; a failure just closes."""
        reply = self._step(token)
        if reply is None:
            return False
        await self._send(_frame(reply))
        return True

    def _step(self, token: bytes) -> bytes | None:
        """Runs one SASL step; None when the login was refused (recorded)."""
        ex = self.exchange
        assert ex is not None
        try:
            reply = ex.step(token)
        except _Refused as e:
            self.gate.failures.append((e.user, ex.mechanism, e.reason))
            self.gate._note(f"refused {e.user!r} ({ex.mechanism}): {e.reason}")
            return None
        if ex.user is not None:
            self.gate.authenticated.append((ex.user, ex.mechanism))
            self.gate._note(f"authenticated {ex.user!r} with {ex.mechanism}")
        return reply

    async def _open_upstream(self) -> None:
        if self.up_writer is None:
            self.up_reader, self.up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.gate.upstream), timeout=UPSTREAM_TIMEOUT)

    async def _forward(self, payload: bytes) -> None:
        """One request upstream, its one response frame back to the client."""
        await self._open_upstream()
        assert self.up_reader is not None and self.up_writer is not None
        self.up_writer.write(_frame(payload))
        await self.up_writer.drain()
        head = await asyncio.wait_for(self.up_reader.readexactly(4), UPSTREAM_TIMEOUT)
        (n,) = struct.unpack(">i", head)
        if n < 0 or n > MAX_RESPONSE_FRAME:
            raise OSError(f"upstream sent a frame of {n} bytes")
        body = await asyncio.wait_for(self.up_reader.readexactly(n), UPSTREAM_TIMEOUT)
        await self._send(head + body)

    async def _relay(self) -> None:
        await self._open_upstream()
        assert self.up_reader is not None and self.up_writer is not None
        pumps = [asyncio.ensure_future(self._pump(self.reader, self.up_writer)),
                 asyncio.ensure_future(self._pump(self.up_reader, self.writer))]
        lifetime = self.gate.session_lifetime_ms / 1000 or None
        try:
            done, _ = await asyncio.wait(pumps, timeout=lifetime,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the session lifetime ran out: close, as Kafka does
                self.gate.expired_sessions += 1
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.wait(pumps)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    return
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            return

    def close(self) -> None:
        for w in (self.writer, self.up_writer):
            if w is not None:
                try:
                    w.close()
                except (OSError, RuntimeError):
                    pass


# ------------------------------------------------------------ test broker setup


class SaslBroker(NamedTuple):
    """A Tansu broker behind a SASL gate; its metadata advertises the gate."""

    broker: object  # harness.Broker
    gate: SaslGate

    @property
    def bootstrap(self) -> str:
        return self.gate.bootstrap


def start_sasl_broker(name: str, logdir: Path, users: dict[str, str],
                      mechanisms: Sequence[str] = MECHANISMS) -> SaslBroker:
    """Starts a SASL gate on a free port G and a memory-backed Tansu broker on a free
    port T behind it, advertising G, so every client connection goes through the gate.
    Returns (broker, gate); stop both (broker.stop(), gate.stop())."""
    import harness
    import teeutil

    gate_port, broker_port = harness.free_port(), harness.free_port()
    gate = SaslGate((HOST, broker_port), users, mechanisms, listen_port=gate_port).start()
    try:
        broker = teeutil.start_tansu_at(name, logdir, port=broker_port,
                                        advertised_port=gate.port)
    except BaseException:
        gate.stop()
        raise
    return SaslBroker(broker, gate)


# ------------------------------------------------------------------------ main


def main(argv: list[str]) -> int:
    if len(argv) < 4 or any(":" not in a for a in argv[2:]):
        print(__doc__)
        return 2
    host, port = argv[2].rsplit(":", 1)
    users = dict(a.split(":", 1) for a in argv[3:])
    g = SaslGate((host, int(port)), users, listen_port=int(argv[1]), verbose=True).start()
    print(f"SASL gate {g.bootstrap} -> {host}:{port}; users {sorted(users)}; "
          f"mechanisms {', '.join(g.mechanisms)}; Ctrl-C stops it")
    g.serve_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
