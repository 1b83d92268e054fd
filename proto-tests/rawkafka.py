"""A tiny Kafka client for looking at stored record batches byte for byte.

Speaks just enough of the protocol (non-flexible versions, header v1) to fetch a
partition's raw record batches: Fetch v4, which returns the bytes exactly as the broker
stores them. Record batches are split by baseOffset/batchLength and their 61-byte v2
header is decoded; the records section (bytes 61..) is kept as is (still compressed).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from harness import HOST, encode_request, recv_frame, uvarint

FETCH = 1
BATCH_HEADER = 61

COMPRESSION = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


@dataclass(frozen=True)
class RawBatch:
    """One v2 record batch as stored by a broker."""

    base_offset: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    raw: bytes  # the whole batch, header included

    @property
    def records_section(self) -> bytes:
        """The (compressed) records: everything after the 61-byte header."""
        return self.raw[BATCH_HEADER:]

    @property
    def compression(self) -> str:
        return COMPRESSION.get(self.attributes & 0x7, f"?{self.attributes & 0x7}")

    @property
    def transactional(self) -> bool:
        return bool(self.attributes & 0x10)

    @property
    def control(self) -> bool:
        return bool(self.attributes & 0x20)

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta


_HEADER = struct.Struct(">qiibIhiqqqhii")
assert _HEADER.size == BATCH_HEADER


def split_batches(data: bytes) -> list[RawBatch]:
    """Splits a records field into whole v2 batches (a partial batch at the end, which
    brokers may return when max_bytes cuts one, is left out)."""
    out = []
    pos = 0
    while pos + 12 <= len(data):
        base_offset, batch_length = struct.unpack_from(">qi", data, pos)
        end = pos + 12 + batch_length
        if end > len(data) or batch_length < BATCH_HEADER - 12:
            break
        fields = _HEADER.unpack_from(data, pos)
        if fields[3] != 2:
            raise ValueError(f"batch at offset {base_offset} has magic {fields[3]}, not 2")
        (_, _, leader_epoch, magic, crc, attributes, last_delta, base_ts, max_ts, pid,
         epoch, base_seq, count) = fields
        out.append(RawBatch(base_offset, leader_epoch, magic, crc, attributes, last_delta,
                            base_ts, max_ts, pid, epoch, base_seq, count,
                            bytes(data[pos:end])))
        pos = end
    return out


# ------------------------------------------------------------------ encoding bits


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        vals = struct.unpack_from(">" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(">" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string(self) -> str | None:
        n = self.take("h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def bytes_(self) -> bytes | None:
        n = self.take("i")
        if n < 0:
            return None
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(b)


@dataclass
class FetchedPartition:
    error_code: int
    high_watermark: int
    last_stable_offset: int
    aborted: list[tuple[int, int]]
    records: bytes


def fetch_v4(bootstrap: str, topic: str, partition: int, offset: int,
             max_bytes: int = 8 << 20, read_committed: bool = False,
             timeout: float = 10.0) -> FetchedPartition:
    """One Fetch v4 request for one partition, straight to `bootstrap` (a single broker
    that leads the partition, as a Tansu broker always does)."""
    host, port = bootstrap.rsplit(":", 1)
    body = struct.pack(">iiiib", -1, 100, 1, max_bytes, 1 if read_committed else 0)
    body += struct.pack(">i", 1) + _string(topic)
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes)
    with socket.create_connection((host or HOST, int(port)), timeout=timeout) as s:
        s.sendall(encode_request(FETCH, 4, 7, body))
        corr, resp = recv_frame(s)
    assert corr == 7, f"correlation id {corr}, expected 7"
    r = _Reader(resp)
    r.take("i")  # throttle_time_ms
    for _ in range(r.take("i")):
        name = r.string()
        for _ in range(r.take("i")):
            index, error, hw, lso = r.take("ihqq")
            n_aborted = r.take("i")
            aborted = [r.take("qq") for _ in range(max(n_aborted, 0))]
            records = r.bytes_() or b""
            if name == topic and index == partition:
                return FetchedPartition(error, hw, lso, aborted, records)
    raise AssertionError(f"fetch response has no {topic}-{partition}")


def read_batches(bootstrap: str, topic: str, partition: int, timeout: float = 10.0,
                 max_batches: int = 100_000) -> list[RawBatch]:
    """Every record batch of a partition from offset 0 to the end (where a fetch brings
    nothing new), in offset order, control batches included."""
    out: list[RawBatch] = []
    offset = 0
    while len(out) < max_batches:
        f = fetch_v4(bootstrap, topic, partition, offset, timeout=timeout)
        if f.error_code != 0:
            raise AssertionError(f"fetch {topic}-{partition}@{offset} from {bootstrap}: "
                                 f"error {f.error_code}")
        got = [b for b in split_batches(f.records) if b.last_offset >= offset]
        if not got:
            break
        out.extend(got)
        offset = got[-1].last_offset + 1
    return out


# ------------------------------------------------------------- writing batches

def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    """Kafka's signed (zigzag) varint."""
    return uvarint((n << 1) ^ (n >> 63))


def encode_batch(records: list[tuple[bytes | None, bytes | None]], timestamp: int) -> bytes:
    """An uncompressed v2 record batch without producer id (a plain producer's)."""
    body = bytearray()
    for i, (key, value) in enumerate(records):
        r = bytearray(b"\x00")  # attributes
        r += _varint(0) + _varint(i)  # timestamp delta, offset delta
        r += _varint(-1) if key is None else _varint(len(key)) + key
        r += _varint(-1) if value is None else _varint(len(value)) + value
        r += _varint(0)  # no headers
        body += _varint(len(r)) + r
    after_crc = struct.pack(">hiqqqhii", 0, len(records) - 1, timestamp, timestamp, -1, -1, -1,
                            len(records)) + bytes(body)
    head = struct.pack(">ib", -1, 2)  # partition leader epoch, magic
    crc = struct.pack(">I", crc32c(after_crc))
    rest = head + crc + after_crc
    return struct.pack(">qi", 0, len(rest)) + rest


def produce_request_v3(correlation_id: int, topic: str, partition: int, batch: bytes,
                       acks: int) -> bytes:
    """A Produce v3 request frame for one partition."""
    body = struct.pack(">hhi", -1, acks, 30000)  # no transactional id, acks, timeout
    body += struct.pack(">i", 1) + _string(topic)
    body += struct.pack(">i", 1) + struct.pack(">i", partition)
    body += struct.pack(">i", len(batch)) + batch
    return encode_request(0, 3, correlation_id, body)
