"""Records aiokafka cannot decode, read raw from the broker so they can be parked.

aiokafka decodes every header key as UTF-8 while it unpacks a fetched batch; one
record whose header key is not UTF-8 makes `getmany()` raise `UnicodeDecodeError`
(naming neither partition nor offset) every time that batch is fetched, which
blocks its partition forever. This module fetches a partition's records with a
plain Fetch request and parses them itself, keeping header keys as bytes, so the
consumer can find the offending record, hand it over and seek past it.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import struct
from dataclasses import dataclass

from aiokafka import ConsumerRecord, TopicPartition  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.client import AIOKafkaClient  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.codec import (  # pyright: ignore[reportMissingTypeStubs]
    gzip_decode,
    lz4_decode,
    snappy_decode,
    zstd_decode,
)
from aiokafka.errors import KafkaError, for_code  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.protocol.fetch import FetchRequest  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.record.util import decode_varint  # pyright: ignore[reportMissingTypeStubs]

RawHeaders = tuple[tuple[bytes, bytes | None], ...]

# Record batch v2 header (KIP-98): the fields we need, at fixed positions.
_BATCH_PREFIX = struct.Struct(">qi")  # base offset, length of the rest
_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
_MAGIC_AT = 16
_COMPRESSION_MASK = 0x07
_LOG_APPEND_TIME = 0x08
_CONTROL = 0x20
_DECOMPRESS = {1: gzip_decode, 2: snappy_decode, 3: lz4_decode, 4: zstd_decode}


@dataclass(frozen=True)
class RawRecord:
    """One record as stored, header keys left undecoded."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: RawHeaders

    def header_error(self) -> UnicodeDecodeError | None:
        """The error aiokafka meets decoding this record's header keys, or None."""
        for key, _value in self.headers:
            try:
                key.decode("utf-8")
            except UnicodeDecodeError as exc:
                return exc
        return None

    def to_consumer_record(self, tp: TopicPartition) -> ConsumerRecord[bytes, bytes]:
        """The record as aiokafka would deliver it (header keys decoded; any that are not
        UTF-8 keep their bytes as backslash escapes)."""
        headers = tuple(
            (key.decode("utf-8", errors="backslashreplace"), value or b"")
            for key, value in self.headers
        )
        return ConsumerRecord(
            tp.topic,
            tp.partition,
            self.offset,
            self.timestamp,
            self.timestamp_type,
            self.key,
            self.value,
            None,
            len(self.key) if self.key is not None else -1,
            len(self.value) if self.value is not None else -1,
            headers,
        )


@dataclass(frozen=True)
class UndecodableRecord:
    """A record aiokafka could not decode, with everything the broker stored for it.

    `error` says why (today always a header key that is not UTF-8). Header keys are
    raw bytes; `as_consumer_record()` gives a lossy view for code that takes records.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: RawHeaders
    error: BaseException

    @classmethod
    def from_raw(
        cls, tp: TopicPartition, raw: RawRecord, error: BaseException
    ) -> UndecodableRecord:
        """Describe `raw`, read from `tp`, which failed with `error`."""
        return cls(
            tp.topic,
            tp.partition,
            raw.offset,
            raw.timestamp,
            raw.key,
            raw.value,
            raw.headers,
            error,
        )

    def as_consumer_record(self) -> ConsumerRecord[bytes, bytes]:
        """This record as aiokafka would deliver it, bad header keys backslash-escaped."""
        raw = RawRecord(self.offset, self.timestamp, 0, self.key, self.value, self.headers)
        return raw.to_consumer_record(TopicPartition(self.topic, self.partition))


def _read_bytes(buffer: bytearray, pos: int) -> tuple[bytes | None, int]:
    length, pos = decode_varint(buffer, pos)
    if length < 0:
        return None, pos
    end = pos + length
    if end > len(buffer):
        raise ValueError("record field runs past the end of its batch")
    return bytes(buffer[pos:end]), end


def _parse_batch(batch: bytes, start: int) -> list[RawRecord]:
    fields = _BATCH_HEADER.unpack_from(batch)
    base_offset, attributes, first_ts, max_ts, count = (
        fields[0],
        fields[5],
        fields[7],
        fields[8],
        fields[12],
    )
    if attributes & _CONTROL:
        return []
    body = bytearray(batch[_BATCH_HEADER.size :])
    codec = attributes & _COMPRESSION_MASK
    if codec:
        body = bytearray(_DECOMPRESS[codec](body))
    log_append = bool(attributes & _LOG_APPEND_TIME)
    records: list[RawRecord] = []
    pos = 0
    for _ in range(count):
        length, pos = decode_varint(body, pos)
        end = pos + length
        pos += 1  # attributes (int8, unused)
        ts_delta, pos = decode_varint(body, pos)
        offset_delta, pos = decode_varint(body, pos)
        key, pos = _read_bytes(body, pos)
        value, pos = _read_bytes(body, pos)
        header_count, pos = decode_varint(body, pos)
        headers: list[tuple[bytes, bytes | None]] = []
        for _ in range(header_count):
            h_key, pos = _read_bytes(body, pos)
            h_value, pos = _read_bytes(body, pos)
            headers.append((h_key or b"", h_value))
        if pos != end:
            raise ValueError(f"record at offset {base_offset + offset_delta} has a bad length")
        offset = base_offset + offset_delta
        if offset >= start:
            timestamp = max_ts if log_append else first_ts + ts_delta
            records.append(
                RawRecord(offset, timestamp, int(log_append), key, value, tuple(headers))
            )
    return records


def parse_record_set(data: bytes, start: int) -> list[RawRecord]:
    """Parse a Fetch response's record set into records at offset `start` or later.

    Control batches are skipped and a truncated last batch is ignored, as aiokafka does.

    Raises:
        ValueError: the data is not well-formed record batches, or uses the pre-0.11
            message format (which has no headers, so never needs this parser).
    """
    records: list[RawRecord] = []
    pos = 0
    while pos + _BATCH_PREFIX.size <= len(data):
        _base, length = _BATCH_PREFIX.unpack_from(data, pos)
        end = pos + _BATCH_PREFIX.size + length
        if end > len(data):
            break
        magic = data[pos + _MAGIC_AT]
        if magic < 2:
            raise ValueError(f"message format v{magic} is not supported here")
        records.extend(_parse_batch(data[pos:end], start))
        pos = end
    return records


async def fetch_raw_records(
    client: AIOKafkaClient, tp: TopicPartition, offset: int, max_bytes: int
) -> list[RawRecord]:
    """Fetch `tp` from `offset` (at most `max_bytes`, at least one batch) from its leader.

    Raises:
        aiokafka.errors.KafkaError: no leader is known, the request failed, or the
            broker answered with an error for the partition.
        ValueError: the broker returned data that is not well-formed record batches.
    """
    leader = client.cluster.leader_for_partition(tp)
    if leader is None or leader == -1:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            raise KafkaError(f"no leader known for {tp.topic}:{tp.partition}")
    request = FetchRequest(0, 1, max_bytes, 0, [(tp.topic, [(tp.partition, offset, max_bytes)])])
    response = await client.send(leader, request)
    for topic, partitions in response.topics:
        for partition, error_code, _highwater, *rest in partitions:
            if (topic, partition) != (tp.topic, tp.partition):
                continue
            if error_code:
                raise for_code(error_code)(f"fetching {tp.topic}:{tp.partition}@{offset}")
            return parse_record_set(bytes(rest[-1] or b""), offset)
    return []
