"""detr_jax.torch_io.pth: reading real torch files, exact round trips, refusing hostile or broken files."""
import argparse
import copyreg
import io
import os
import pickle
import re
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from detr_jax.errors import UserError
from detr_jax.torch_io import PthError, load_pth, pth, save_pth

FIXTURES = Path(__file__).parent / "fixtures" / "pth"
LEGACY_HEADER = b"".join(pickle.dumps(v, protocol=2) for v in (
    0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}))


def expected_state():
  """What tests/fixtures/pth/make_fixtures.py state_dict() holds, rebuilt with numpy."""
  base = np.arange(24, dtype=np.float32).reshape(4, 6) / 4 - 2
  return {
      "f32": base,
      "f32_t": base.T,
      "f32_slice": base[1:3, 2:5],
      "f32_expand": np.broadcast_to(np.arange(4, dtype=np.float32), (3, 4)),
      "f32_special": np.array([np.nan, np.inf, -np.inf, -0.0], np.float32),
      "f64": base.astype(np.float64) / 8,
      "f16": base.astype(np.float16),
      "bf16": base.astype(ml_dtypes.bfloat16),
      "i64": np.arange(-3, 3, dtype=np.int64) * 10**12,
      "i32": np.arange(-5, 5, dtype=np.int32) * 100000,
      "i16": np.arange(-4, 4, dtype=np.int16) * 1000,
      "i8": np.arange(-128, 128, 37).astype(np.int8),
      "u8": np.arange(0, 256, 51).astype(np.uint8),
      "bool": np.array([True, False, True]),
      "scalar": np.array(7, np.int64),
      "empty": np.zeros((0, 3), np.float32),
      "param": np.arange(6, dtype=np.float32).reshape(2, 3),
  }


def assert_same(got, want):
  """Same key order, and arrays of the same dtype, shape and bytes (NaN payloads and -0.0 included)."""
  assert list(got) == list(want)
  for key, value in want.items():
    assert isinstance(got[key], np.ndarray), key
    assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
    assert got[key].tobytes() == np.ascontiguousarray(value).tobytes(), key
    assert got[key].flags.c_contiguous and got[key].flags.owndata and got[key].flags.writeable, key


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_reads_torch_state_dict(kind):
  state = load_pth(FIXTURES / f"state_{kind}.pth")
  assert type(state) is dict
  assert_same(state, expected_state())


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_reads_torch_training_checkpoint(kind):
  ckpt = load_pth(FIXTURES / f"checkpoint_{kind}.pth")
  assert list(ckpt) == ["model", "args", "epoch", "shape", "where"]
  shapes = {"0.weight": (2, 1, 1, 1), "0.bias": (2,), "1.weight": (2,), "1.bias": (2,),
            "1.running_mean": (2,), "1.running_var": (2,), "1.num_batches_tracked": ()}
  want = {name: (np.arange(int(np.prod(shape))).reshape(shape) + i).astype(np.float32)
          for i, (name, shape) in enumerate(shapes.items())}
  want["1.num_batches_tracked"] = np.array(6, np.int64)
  assert type(ckpt["model"]) is dict  # the OrderedDict with torch's _metadata attribute became a plain dict
  assert_same(ckpt["model"], want)
  assert isinstance(ckpt["args"], argparse.Namespace)
  assert vars(ckpt["args"]) == dict(lr=1e-4, backbone="resnet50", lr_drop=200, aux_loss=True,
                                    frozen_weights=None, num_queries=100, device="cuda", output_dir="",
                                    milestones=[3, 5])
  assert ckpt["epoch"] == 3 and ckpt["shape"] == (2, 3) and ckpt["where"] == "cuda:1"


def round_trip_object():
  rng = np.random.default_rng(0)
  model = {"z.weight": rng.normal(size=(3, 5)).astype(np.float32), "a.bias": rng.normal(size=5)}
  model.update({
      "i64": np.array([-2**40, 0, 5], np.int64),
      "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
      "i16": np.arange(-3, 3, dtype=np.int16),
      "i8": np.arange(-3, 3, dtype=np.int8),
      "u8": np.arange(250, 256, dtype=np.uint8),
      "bool": np.array([[True], [False]]),
      "f16": rng.normal(size=4).astype(np.float16),
      "bf16": rng.normal(size=4).astype(ml_dtypes.bfloat16),
      "scalar": np.array(3.5, np.float32),
      "empty": np.zeros((0, 4), np.float32),
      "transposed": np.arange(12.0).reshape(3, 4).T,
      "big_endian": np.arange(4, dtype=">f4"),
      "special": np.array([np.nan, np.inf, -0.0, np.float32(1e-45)], np.float32),
  })
  return {"model": model, "epoch": 3, "lr": 1e-4, "name": "détr", "flags": [True, None, 2**70],
          "pair": (1, "a")}


def test_round_trip_is_exact(tmp_path):
  obj = round_trip_object()
  path = tmp_path / "ckpt.pth"
  save_pth(obj, path)
  got = load_pth(path)
  assert list(got) == list(obj)
  want = {k: v.astype(v.dtype.newbyteorder("=")) for k, v in obj["model"].items()}
  assert_same(got["model"], want)
  assert {k: got[k] for k in ("epoch", "lr", "name", "flags", "pair")} == {
      "epoch": 3, "lr": 1e-4, "name": "détr", "flags": [True, None, 2**70], "pair": (1, "a")}
  assert os.listdir(tmp_path) == ["ckpt.pth"]  # the temp file was renamed away


def test_saved_zip_is_torch_layout(tmp_path):
  path = tmp_path / "a.pth"
  save_pth({"model": {"w": np.ones(3, np.float32)}, "epoch": 1}, path)
  with zipfile.ZipFile(path) as archive:
    assert archive.namelist() == ["archive/data.pkl", "archive/.format_version", "archive/.storage_alignment",
                                  "archive/byteorder", "archive/data/0", "archive/version"]
    assert archive.read("archive/byteorder") == b"little" and archive.read("archive/version") == b"3\n"
    pkl = archive.read("archive/data.pkl")
    info = archive.getinfo("archive/data/0")
  assert b"ccollections\nOrderedDict\n" in pkl and b"ctorch\nFloatStorage\n" in pkl
  raw = path.read_bytes()
  name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
  assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0  # aligned for torch.load(mmap=True)


def test_save_refuses_unsupported_values_and_keeps_old_file(tmp_path):
  path = tmp_path / "a.pth"
  save_pth({"w": np.ones(2, np.float32)}, path)
  with pytest.raises(PthError, match="unsupported dtype complex64"):
    save_pth({"w": np.ones(2, np.complex64)}, path)
  with pytest.raises(PthError, match="cannot save a value of type object"):
    save_pth({"w": object()}, path)
  assert_same(load_pth(path), {"w": np.ones(2, np.float32)})
  assert os.listdir(tmp_path) == ["a.pth"]


def write_zip(path, records):
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in records.items():
      archive.writestr(f"archive/{name}", data)


class Reduces:
  """What a hostile pickler writes: unpickling it would call function(*args)."""

  def __init__(self, function, *args):
    self.function, self.args = function, args

  def __reduce__(self):
    return self.function, self.args


def text(value: str) -> bytes:
  raw = value.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def payload(how: str, sentinel: str) -> tuple:
  """A pickle that would create sentinel if its code ran, and what refusing it says."""
  command, code = text(f"touch {sentinel}"), text(f"open({sentinel!r}, 'w').close()")
  proto2 = lambda *parts: b"\x80\x02" + b"".join(parts) + b"."
  return {
      "GLOBAL+REDUCE": (proto2(b"cos\nsystem\n", command, b"\x85R"), "forbidden global 'os.system'"),
      "STACK_GLOBAL": (proto2(b"\x8c\x08builtins\x8c\x04eval\x93", code, b"\x85R"),
                       "forbidden global 'builtins.eval'"),
      "NEWOBJ": (proto2(b"cbuiltins\nexec\n", code, b"\x85\x81"), "forbidden global 'builtins.exec'"),
      "INST": (proto2(b"(", command, b"ios\nsystem\n"), "opcode INST at byte"),
      "OBJ": (proto2(b"(cos\nsystem\n", command, b"o"), "opcode OBJ at byte"),
      "EXT1": (proto2(b"\x82\xf0", command, b"\x85R"), "opcode EXT1 at byte 2: not allowed"),
      "PERSID": (proto2(b"P", command[5:], b"\n"), "opcode PERSID at byte 2: not allowed"),
      "BINPERSID": (proto2(command, b"Q"), "unknown persistent id kind"),
      "__reduce__, protocol 2": (pickle.dumps(Reduces(os.system, f"touch {sentinel}"), protocol=2),
                                 "forbidden global"),
      "__reduce__, protocol 5": (pickle.dumps(Reduces(eval, f"open({sentinel!r}, 'w').close()"), protocol=5),
                                 "forbidden global 'builtins.eval'"),
      "BUILD slot state on an allowed function": (  # would set torch.Size's __defaults__
          proto2(b"ctorch\nSize\n(N}(", text("__defaults__"), b"(", command, b"tutb"),
          "pickle sets the state of a Global (BUILD)"),
      "BUILD on an allowed class": (proto2(b"cargparse\nNamespace\n}(", text("__setstate__"), command, b"ub"),
                                    "__setstate__() missing 1 required positional argument"),
      "BUILD on a tensor": (proto2(b"ctorch._utils\n_rebuild_tensor_v2\n((", text("storage"),
                                   b"ctorch\nFloatStorage\n", text("0"), text("cpu"), b"K\x01tQK\x00)))tR}b"),
                            "pickle sets the state of a Tensor (BUILD)"),
  }[how]


def reader_state():
  """What BUILD could change in the reader's allow-listed globals: attributes and defaults."""
  return {key: vars(value).copy() if isinstance(value, type) else value.function.__defaults__
          for key, value in pth._GLOBALS.items()}


@pytest.mark.parametrize("kind", ["zip", "legacy"])
@pytest.mark.parametrize("how", [
    "GLOBAL+REDUCE", "STACK_GLOBAL", "NEWOBJ", "INST", "OBJ", "EXT1", "PERSID", "BINPERSID",
    "__reduce__, protocol 2", "__reduce__, protocol 5", "BUILD slot state on an allowed function",
    "BUILD on an allowed class", "BUILD on a tensor"])
def test_refuses_code_before_running_it(tmp_path, kind, how):
  sentinel = tmp_path / "pwned"
  data, fragment = payload(how, str(sentinel))
  path = tmp_path / "evil.pth"
  if kind == "zip":
    write_zip(path, {"data.pkl": data, "data/0": b"\0" * 4, "version": b"3\n"})
  else:
    path.write_bytes(LEGACY_HEADER + data)
  globals_before = reader_state()
  copyreg.add_extension("os", "system", 0xF0)  # EXT1 0xF0 would name os.system
  try:
    with pytest.raises(PthError, match=re.escape(fragment)) as info:
      load_pth(path)
  finally:
    copyreg.remove_extension("os", "system", 0xF0)
  message = str(info.value)
  assert message.startswith(f"{path}: ") and "\n" not in message
  assert not sentinel.exists()
  assert reader_state() == globals_before  # the file changed nothing of the reader
  assert_same(load_pth(FIXTURES / "state_zip.pth"), expected_state())


def corrupt(tmp_path, what):
  """Writes a broken file; returns its path and a fragment the error must contain."""
  path = tmp_path / f"{what}.pth"
  state_zip = (FIXTURES / "state_zip.pth").read_bytes()
  legacy = (FIXTURES / "state_legacy.pth").read_bytes()
  if what == "missing":
    return path, "cannot read file (No such file or directory)"
  if what == "fifo":
    os.mkfifo(path)  # opening it would block
    return path, "not a regular file"
  if what == "directory":
    path.mkdir()
    return path, "not a regular file"
  if what == "empty":
    path.write_bytes(b"")
    return path, "empty file"
  if what == "random":
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path, "not a torch file"
  if what == "truncated_zip":
    path.write_bytes(state_zip[:len(state_zip) // 2])
    return path, "truncated or corrupt zip archive"
  if what == "not_torch_zip":
    write_zip(path, {"notes.txt": b"hello"})
    return path, "no '<archive>/data.pkl' record"
  with zipfile.ZipFile(FIXTURES / "state_zip.pth") as archive:
    records = {n.split("/", 1)[1]: archive.read(n) for n in archive.namelist()}
  if what == "missing_storage":
    del records["data/0"]
    write_zip(path, records)
    return path, "missing record 'archive/data/0'"
  if what == "short_storage":
    records["data/0"] = records["data/0"][:-4]
    write_zip(path, records)
    return path, "storage record 'archive/data/0' holds 92 bytes, expected 96"
  if what == "unknown_persistent_id":
    write_zip(path, {"data.pkl": b"\x80\x02(X\x06\x00\x00\x00moduletQ."})
    return path, "unknown persistent id kind 'module'"
  if what == "unsupported_dtype":
    pkl = records["data.pkl"].replace(b"ctorch\nFloatStorage\n", b"ctorch\nComplexFloatStorage\n")
    write_zip(path, {"data.pkl": pkl})
    return path, "unsupported dtype: storage type 'torch.ComplexFloatStorage'"
  if what == "truncated_legacy":
    path.write_bytes(legacy[:-2])
    return path, "truncated legacy stream: storage"
  if what == "truncated_legacy_pickle":
    path.write_bytes(legacy[:len(legacy) // 2])
    return path, "legacy stream's main pickle: truncated or corrupt (ValueError: "
  raise AssertionError(what)


@pytest.mark.parametrize("what", [
    "missing", "fifo", "directory", "empty", "random", "truncated_zip", "not_torch_zip", "missing_storage", "short_storage",
    "unknown_persistent_id", "unsupported_dtype", "truncated_legacy", "truncated_legacy_pickle"])
def test_broken_files_raise_one_line_pth_error(tmp_path, what):
  path, fragment = corrupt(tmp_path, what)
  with pytest.raises(PthError) as info:
    load_pth(path)
  message = str(info.value)
  assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message
  assert isinstance(info.value, UserError)  # CLIs print it as one 'error: ...' line


def torch_save_pickle(obj, protocol: int, monkeypatch) -> bytes:
  """data.pkl as torch.save(obj, pickle_protocol=protocol) writes it; Storage objects in obj are 6 floats '0'."""
  torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

  class FloatStorage:  # only its name is pickled
    pass

  def _rebuild_tensor_v2(*args):
    raise AssertionError(args)

  FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
  FloatStorage.__qualname__, _rebuild_tensor_v2.__qualname__ = "FloatStorage", "_rebuild_tensor_v2"
  torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
  monkeypatch.setitem(sys.modules, "torch", torch)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", FloatStorage, "0", "cpu", 6) if obj is Storage else None

  class Tensor:
    def __init__(self, offset, size, stride):
      self.args = (offset, size, stride)

    def __reduce__(self):
      return _rebuild_tensor_v2, (Storage, *self.args, False, OrderedDict())

  out = io.BytesIO()
  Pickler(out, protocol=protocol).dump(obj(Tensor))
  return out.getvalue()


class Storage:
  """Marks the storage in torch_save_pickle's objects."""


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_every_pickle_protocol_torch_save_can_use(tmp_path, monkeypatch, protocol):
  def checkpoint(tensor):
    w = tensor(0, (2, 3), (3, 1))
    return {"model": OrderedDict([("w", w), ("w_t", tensor(0, (3, 2), (1, 3))), ("tied", w)]),
            "optimizer": {"state": {0: {"step": 3}, 1: {"step": 3}}, "param_groups": [{"params": [0, 1]}]},
            "args": argparse.Namespace(lr=1e-4, milestones=(3, 5)), "shapes": {(2, 3): "w", (3, 2): "w_t"}}

  path = tmp_path / "p.pth"
  write_zip(path, {"data.pkl": torch_save_pickle(checkpoint, protocol, monkeypatch),
                   "data/0": np.arange(6, dtype="<f4").tobytes()})
  got = load_pth(path)
  w = np.arange(6, dtype=np.float32).reshape(2, 3)
  assert_same(got["model"], {"w": w, "w_t": w.T, "tied": w})
  assert got["model"]["tied"] is got["model"]["w"]  # one tensor pickled twice is one array
  assert got["optimizer"] == {"state": {0: {"step": 3}, 1: {"step": 3}}, "param_groups": [{"params": [0, 1]}]}
  assert vars(got["args"]) == {"lr": 1e-4, "milestones": (3, 5)} and got["shapes"] == {(2, 3): "w", (3, 2): "w_t"}


def test_reads_big_endian_zip(tmp_path):
  path = tmp_path / "big.pth"
  save_pth({"f": np.array([1.5, -2.0], np.float32), "i": np.array([1, -300], np.int16)}, path)
  with zipfile.ZipFile(path) as archive:
    records = {n.split("/", 1)[1]: archive.read(n) for n in archive.namelist()}
  records["byteorder"] = b"big"
  records["data/0"] = np.frombuffer(records["data/0"], "<f4").astype(">f4").tobytes()
  records["data/1"] = np.frombuffer(records["data/1"], "<i2").astype(">i2").tobytes()
  write_zip(path, records)
  assert_same(load_pth(path), {"f": np.array([1.5, -2.0], np.float32), "i": np.array([1, -300], np.int16)})


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_load_reads_saved_files(tmp_path, mmap):
  torch = pytest.importorskip("torch")
  obj = round_trip_object()
  path = tmp_path / "ckpt.pth"
  save_pth(obj, path)
  got = torch.load(path, weights_only=True, mmap=mmap)
  assert list(got) == list(obj) and list(got["model"]) == list(obj["model"])
  for key, value in obj["model"].items():
    tensor = got["model"][key]
    if value.dtype == ml_dtypes.bfloat16:  # torch.Tensor.numpy() has no bfloat16
      tensor = tensor.view(torch.int16)
    array = tensor.numpy().view(value.dtype.newbyteorder("="))
    assert array.dtype == value.dtype.newbyteorder("=") and array.shape == value.shape, key
    assert array.tobytes() == np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes(), key
  assert got["epoch"] == 3 and got["name"] == "détr" and got["flags"] == [True, None, 2**70]
