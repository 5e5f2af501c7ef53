"""TensorBoard scalars written directly: an event file of TFRecords holding `Event` protos.

TensorBoard reads `events.out.tfevents.*` files: TFRecords (a little-endian uint64 length, its
masked CRC-32C, the bytes, their masked CRC-32C) of `tensorflow.Event` protocol buffers. Scalars
need four fields of it, encoded here by hand, so a run needs neither TensorFlow nor tensorboardX
(whose import pulls in torch and takes seconds).

  Event:         wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
                 summary = 5 (Summary)
  Summary:       value = 1 (repeated Value)
  Summary.Value: tag = 1 (string), simple_value = 2 (float)
"""

from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum of TFRecords."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked(crc32c(length))) + data
          + struct.pack("<I", _masked(crc32c(data))))


def _varint(value: int) -> bytes:
  out = bytearray()
  value &= (1 << 64) - 1
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, wall_time: float, *, scalars: dict[str, float] | None = None,
          file_version: str | None = None) -> bytes:
  """The serialized `Event` with a scalar summary (or the file's version record)."""
  out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(int(step))
  if file_version is not None:
    out += _field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", float(value)))
        for tag, value in scalars.items())
    out += _field(5, values)
  return out


class EventWriter:
  """Appends scalar events to one new event file in `directory`."""
  _opened = 0  # Files opened by this process: two writers never share a name.

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    EventWriter._opened += 1
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}."
            f"{EventWriter._opened}")
    self.path = os.path.join(directory, name)
    self._file = open(self.path, "ab")
    self._file.write(tfrecord(event(0, time.time(), file_version="brain.Event:2")))

  def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
    self._file.write(tfrecord(event(step, time.time(), scalars=scalars)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()
