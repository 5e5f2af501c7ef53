"""The run's metrics: JSON lines (one row per step after a resume) and TensorBoard event files
that TensorBoard's own protocol buffers read back."""

import json
import os
import struct

import pytest

from vlprobe_jax import progress
from vlprobe_jax import tensorboard


def test_crc32c_known_values():
  # RFC 3720 (iSCSI) B.4 test vectors.
  assert tensorboard.crc32c(bytes(32)) == 0x8A9136AA
  assert tensorboard.crc32c(bytes([0xFF] * 32)) == 0x62A8AB43
  assert tensorboard.crc32c(bytes(range(32))) == 0x46DD794E


def _records(path):
  with open(path, "rb") as f:
    data = f.read()
  out, at = [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    header_crc, = struct.unpack("<I", data[at + 8:at + 12])
    payload = data[at + 12:at + 12 + length]
    payload_crc, = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
    assert header_crc == tensorboard._masked(tensorboard.crc32c(data[at:at + 8]))  # pylint: disable=protected-access
    assert payload_crc == tensorboard._masked(tensorboard.crc32c(payload))  # pylint: disable=protected-access
    out.append(payload)
    at += 16 + length
  return out


def test_event_files_parse_as_tensorboard_events(tmp_path):
  event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")  # a third-party reader
  writer = tensorboard.EventWriter(str(tmp_path))
  writer.add_scalars(3, {"train/loss": 1.5, "reward/sample_mean": -2.25})
  writer.add_scalars(2 ** 40, {"x": 0.0})
  writer.close()
  events = [event_pb2.Event.FromString(r) for r in _records(writer.path)]
  assert events[0].file_version == "brain.Event:2"
  assert events[1].step == 3 and events[1].wall_time > 1e9
  assert {(v.tag, v.simple_value) for v in events[1].summary.value} == {
      ("train/loss", 1.5), ("reward/sample_mean", -2.25)}
  assert events[2].step == 2 ** 40


def test_resumed_metrics_keep_one_row_per_step(tmp_path):
  writer = progress.MetricWriter(str(tmp_path))
  for step in (2, 4, 6):
    writer.write(step, {"loss": float(step)})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 8, "loss"')  # half-written by a killed run
  writer = progress.MetricWriter(str(tmp_path), resume_step=4)  # the last checkpoint: step 4
  writer.write(6, {"loss": 60.0})
  writer.close()
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [(r["step"], r["loss"]) for r in rows] == [(2, 2.0), (4, 4.0), (6, 60.0)]
  assert len(os.listdir(tmp_path / "tensorboard")) == 2  # one event file per launch


def test_other_processes_write_nothing(tmp_path):
  writer = progress.MetricWriter(str(tmp_path / "run"), enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not os.path.exists(tmp_path / "run")
