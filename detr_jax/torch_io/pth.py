"""Safe, torch-free reader and writer for PyTorch .pth files. numpy only.

Reads torch.save's zip format (torch >= 1.6) and its legacy stream format (older torch). Every
pickle goes through an unpickler that only knows a short allow-list of globals, so nothing a file
names can run. Writes the zip format that torch.load reads with weights_only=True and mmap=True.
"""
import argparse
import io
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ALIGNMENT = 64  # torch aligns zip record data to 64 bytes (mmap=True loads them in place)
_STORAGE_DTYPES = {  # torch typed storage class -> numpy dtype name
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
_DTYPE_STORAGES = {dtype: storage for storage, dtype in _STORAGE_DTYPES.items()}


class PthError(ValueError):
  """A .pth file that cannot be read or written; the one-line message names the file and why."""


def _dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=import-outside-toplevel
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def _one_line(e: BaseException) -> str:
  return " ".join(f"{type(e).__name__}: {e}".split())


# ----------------------------------------------------------------------------- reading


class _OrderedDict(dict):
  """collections.OrderedDict stand-in; attributes torch sets on state dicts (_metadata) are dropped."""


class _Namespace:
  """argparse.Namespace stand-in: the unpickler can only set its attributes (BUILD)."""


class _Storage:
  """One torch storage: dtype, element count and, once read, its data as a 1-D array."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel, self.array = dtype, numel, None


class _Tensor:
  """A tensor's strided view of a storage; becomes an owning array once all storages are read."""
  __hash__ = None

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def array(self) -> np.ndarray:
    """Checks the geometry against the storage's data (as it is now) and copies the tensor out."""
    base = getattr(self.storage, "array", None) if isinstance(self.storage, _Storage) else None
    if not isinstance(base, np.ndarray) or base.ndim != 1:
      raise PthError("tensor rebuilt from something that is not a storage")
    offset, size, stride = self.offset, self.size, self.stride
    ints = lambda t: isinstance(t, tuple) and all(type(v) is int and v >= 0 for v in t)
    if not ints((offset,)) or not ints(size) or not ints(stride) or len(size) != len(stride):
      raise PthError(f"bad tensor geometry (offset {offset!r}, size {size!r}, stride {stride!r})")
    if 0 in size:
      return np.zeros(size, base.dtype)
    if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= base.size:
      raise PthError(f"tensor (offset {offset}, size {size}, stride {stride}) overruns its storage of "
                     f"{base.size} elements")
    view = np.lib.stride_tricks.as_strided(base[offset:], size, [s * base.itemsize for s in stride])
    return np.array(view, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  if not isinstance(data, _Tensor):
    raise PthError("parameter rebuilt from something that is not a tensor")
  return data


def _size(dims):
  return tuple(dims)


def _device(kind, index=None):
  if not isinstance(kind, str) or not (index is None or type(index) is int):
    raise PthError(f"bad torch.device({kind!r}, {index!r})")
  return kind if index is None else f"{kind}:{index}"


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): _OrderedDict,
    ("argparse", "Namespace"): _Namespace,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
}


class _StorageType(str):
  """Marker for a torch.<Type>Storage global; only meaningful inside a persistent id."""


class _Unpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals and 'storage' persistent ids."""

  def __init__(self, stream, load_storage=None):
    super().__init__(stream)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) in _GLOBALS:
      return _GLOBALS[module, name]
    if module == "torch" and name.endswith("Storage"):
      if name not in _STORAGE_DTYPES:
        raise PthError(f"unsupported dtype: storage type 'torch.{name}'")
      return _StorageType(name)
    raise PthError(f"forbidden global '{module}.{name}' in pickle (refused before anything ran)")

  def persistent_load(self, pid):
    if self._load_storage is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      kind = pid[0] if isinstance(pid, tuple) and pid else pid
      raise PthError(f"unknown persistent id kind {kind!r} in pickle")
    if len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str) or (
        type(pid[4]) is not int or pid[4] < 0):
      raise PthError(f"malformed storage persistent id {pid!r}")
    if len(pid) == 6 and pid[5] is not None:
      raise PthError(f"storage views (pre-1.0 files) are not supported: {pid!r}")
    return self._load_storage(_dtype(_STORAGE_DTYPES[pid[1]]), pid[2], pid[4])


def _storage_array(buf, offset: int, dtype: np.dtype, numel: int, byteorder: str) -> np.ndarray:
  array = np.frombuffer(buf, dtype, numel, offset)
  if byteorder != sys.byteorder:
    array = array.view(f"u{dtype.itemsize}").byteswap().view(dtype)
  return array


def _load_zip(f) -> object:
  try:
    archive = zipfile.ZipFile(f)
    names = archive.namelist()
  except Exception as e:
    raise PthError(f"truncated or corrupt zip archive ({_one_line(e)})") from None
  pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if not pickles:
    raise PthError("zip archive has no '<archive>/data.pkl' record: not a torch file")
  prefix = pickles[0][:-len("data.pkl")]

  def read(name: str) -> bytes:
    try:
      return archive.read(name)
    except KeyError:
      raise PthError(f"missing record '{name}' in zip archive") from None
    except Exception as e:
      raise PthError(f"corrupt zip record '{name}' ({_one_line(e)})") from None

  byteorder = "little"  # torch's default for files written before the byteorder record existed
  if prefix + "byteorder" in names:
    byteorder = read(prefix + "byteorder").decode("ascii", "replace")
  if byteorder not in ("little", "big"):
    raise PthError(f"unknown byteorder record {byteorder!r}")
  storages = {}

  def load_storage(dtype: np.dtype, key: str, numel: int) -> _Storage:
    if key not in storages:
      name = f"{prefix}data/{key}"
      buf = read(name)
      if len(buf) != numel * dtype.itemsize:
        raise PthError(f"storage record '{name}' holds {len(buf)} bytes, expected {numel * dtype.itemsize}")
      storages[key] = _Storage(dtype, numel)
      storages[key].array = _storage_array(buf, 0, dtype, numel, byteorder)
    if storages[key].dtype != dtype:
      raise PthError(f"storage '{key}' is used with two dtypes")
    return storages[key]

  try:
    return _Unpickler(io.BytesIO(read(prefix + "data.pkl")), load_storage).load()
  except PthError:
    raise
  except Exception as e:
    raise PthError(f"corrupt pickle '{prefix}data.pkl' ({_one_line(e)})") from None


def _load_legacy(data: bytes) -> object:
  stream = io.BytesIO(data)

  def unpickle(what: str, load_storage=None):
    try:
      return _Unpickler(stream, load_storage).load()
    except PthError:
      raise
    except Exception as e:
      raise PthError(f"{what} ({_one_line(e)})") from None

  not_torch = "not a torch file: neither a zip archive nor a legacy torch stream"
  if unpickle(not_torch) != _LEGACY_MAGIC:
    raise PthError(not_torch)
  protocol = unpickle("truncated or corrupt legacy stream: protocol version")
  if protocol != _LEGACY_PROTOCOL:
    raise PthError(f"unsupported legacy protocol version {protocol!r}")
  sys_info = unpickle("truncated or corrupt legacy stream: sys_info")
  if not isinstance(sys_info, dict) or not isinstance(sys_info.get("little_endian"), bool):
    raise PthError(f"malformed legacy sys_info {sys_info!r}")
  byteorder = "little" if sys_info["little_endian"] else "big"
  storages = {}

  def load_storage(dtype: np.dtype, key: str, numel: int) -> _Storage:
    storage = storages.setdefault(key, _Storage(dtype, numel))
    if storage.dtype != dtype or storage.numel != numel:
      raise PthError(f"storage '{key}' is used with two dtypes or sizes")
    return storage

  obj = unpickle("truncated or corrupt legacy stream: main pickle", load_storage)
  keys = unpickle("truncated or corrupt legacy stream: storage key list")
  if not isinstance(keys, list):
    raise PthError(f"malformed legacy storage key list {keys!r}")
  offset = stream.tell()
  for key in keys:
    storage = storages.get(key) if isinstance(key, str) else None
    if storage is None:
      raise PthError(f"legacy storage key list names unknown storage {key!r}")
    if len(data) < offset + 8:
      raise PthError(f"truncated legacy stream: no element count for storage '{key}'")
    numel = int.from_bytes(data[offset:offset + 8], byteorder, signed=True)
    if numel != storage.numel:
      raise PthError(f"legacy storage '{key}' holds {numel} elements, expected {storage.numel}")
    nbytes, offset = numel * storage.dtype.itemsize, offset + 8
    if len(data) < offset + nbytes:
      raise PthError(f"truncated legacy stream: storage '{key}' needs {nbytes} bytes, "
                     f"{len(data) - offset} left")
    storage.array = _storage_array(data, offset, storage.dtype, numel, byteorder)
    offset += nbytes
  missing = [key for key, storage in storages.items() if storage.array is None]
  if missing:
    raise PthError(f"missing storage record '{missing[0]}' in legacy stream")
  return obj


def _finish(obj, memo: dict):
  """Replaces the stand-ins by public results: arrays, plain dicts, argparse.Namespace."""
  if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, bytearray)):
    return obj
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _Tensor):
    out = memo[id(obj)] = obj.array()
  elif isinstance(obj, dict):
    out = memo[id(obj)] = {}
    for key, value in obj.items():
      out[_finish(key, memo)] = _finish(value, memo)
  elif isinstance(obj, list):
    out = memo[id(obj)] = []
    out.extend(_finish(value, memo) for value in obj)
  elif type(obj) in (tuple, set, frozenset):
    out = memo[id(obj)] = type(obj)(_finish(value, memo) for value in obj)
  elif isinstance(obj, _Namespace):
    out = memo[id(obj)] = argparse.Namespace(**{k: _finish(v, memo) for k, v in vars(obj).items()})
  else:
    raise PthError(f"unexpected object of type {type(obj).__name__} in pickle")
  return out


def load_pth(path) -> object:
  """Reads a .pth file (zip or legacy format) without torch.

  Tensors and Parameters become C-contiguous numpy arrays, OrderedDicts plain dicts (same order),
  argparse.Namespace an argparse.Namespace. Raises PthError on any problem.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      head = f.read(4)
      if not head:
        raise PthError("empty file")
      f.seek(0)
      obj = _load_zip(f) if head == b"PK\x03\x04" else _load_legacy(f.read())
    return _finish(obj, {})
  except PthError as e:
    raise PthError(f"{path}: {e}") from None
  except OSError as e:
    raise PthError(f"{path}: cannot read file ({e.strerror or _one_line(e)})") from None
  except Exception as e:  # anything else a hostile file provokes (RecursionError, MemoryError, ...)
    raise PthError(f"{path}: malformed content ({_one_line(e)})") from None


# ----------------------------------------------------------------------------- writing

_ORDERED_DICT = b"ccollections\nOrderedDict\n)R"  # collections.OrderedDict()


def _emit(obj, out: list, arrays: list) -> None:
  """Appends protocol-2 pickle opcodes for obj to out, as torch.save pickles it; arrays collects storages."""
  if obj is None:
    out.append(b"N")
  elif isinstance(obj, bool):
    out.append(b"\x88" if obj else b"\x89")
  elif isinstance(obj, int):
    if -2**31 <= obj < 2**31:
      out.append(b"J" + struct.pack("<i", obj))
    else:
      raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
      if len(raw) > 255:
        raise PthError(f"integer too large to save: {obj}")
      out.append(b"\x8a" + bytes([len(raw)]) + raw)
  elif isinstance(obj, float):
    out.append(b"G" + struct.pack(">d", obj))
  elif isinstance(obj, str):
    raw = obj.encode("utf-8", "surrogatepass")
    out.append(b"X" + struct.pack("<I", len(raw)) + raw)
  elif isinstance(obj, (tuple, list)):
    out.append(b"(" if isinstance(obj, tuple) else b"](")
    for value in obj:
      _emit(value, out, arrays)
    out.append(b"t" if isinstance(obj, tuple) else b"e")
  elif isinstance(obj, dict):
    state_dict = obj and all(isinstance(v, np.ndarray) for v in obj.values())
    out.append(_ORDERED_DICT + b"(" if state_dict or isinstance(obj, OrderedDict) else b"}(")
    for key, value in obj.items():
      _emit(key, out, arrays)
      _emit(value, out, arrays)
    out.append(b"u")
  elif isinstance(obj, np.ndarray):
    _emit_tensor(obj, out, arrays)
  else:
    raise PthError(f"cannot save a value of type {type(obj).__name__}")


def _emit_tensor(array: np.ndarray, out: list, arrays: list) -> None:
  """torch._utils._rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, OrderedDict())."""
  storage = _DTYPE_STORAGES.get(array.dtype.name)
  if storage is None:
    raise PthError(f"unsupported dtype {array.dtype} (supported: {', '.join(_DTYPE_STORAGES)})")
  arrays.append(np.asarray(array, array.dtype.newbyteorder("<"), order="C"))
  strides, step = [], 1
  for n in reversed(array.shape):
    strides.insert(0, step)
    step *= max(n, 1)
  out.append(b"ctorch._utils\n_rebuild_tensor_v2\n((")
  _emit("storage", out, arrays)
  out.append(b"ctorch\n" + storage.encode() + b"\n")
  for value in (str(len(arrays) - 1), "cpu", array.size):
    _emit(value, out, arrays)
  out.append(b"tQ")
  for value in (0, tuple(array.shape), tuple(strides), False):
    _emit(value, out, arrays)
  out.append(_ORDERED_DICT + b"tR")


def _write_zip(f, records) -> None:
  """Writes stored (uncompressed) records under 'archive/', each one's data 64-byte aligned as torch does."""
  with zipfile.ZipFile(f, "w") as archive:
    for name, data in records:
      info = zipfile.ZipInfo(f"archive/{name}", (1980, 1, 1, 0, 0, 0))
      info.file_size = len(data)
      pad = -(f.tell() + 30 + len(info.filename) + 4) % _ALIGNMENT  # 30: local header, 4: extra field header
      info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
      with archive.open(info, "w") as out:
        out.write(data)


def save_pth(obj, path) -> None:
  """Writes obj as torch.save's zip format, atomically (temp file + rename); torch.load reads it.

  obj nests dicts, lists and tuples of str/int/float/bool/None and numpy arrays. A dict whose values
  are all arrays (a state dict) is written as an OrderedDict of tensors, like module.state_dict().
  """
  path = os.fspath(path)
  out, arrays = [b"\x80\x02"], []
  try:
    _emit(obj, out, arrays)
  except PthError as e:
    raise PthError(f"{path}: {e}") from None
  except RecursionError as e:
    raise PthError(f"{path}: cannot save ({_one_line(e)})") from None
  records = [("data.pkl", b"".join(out) + b"."), (".format_version", b"1"),
             (".storage_alignment", str(_ALIGNMENT).encode()), ("byteorder", b"little")]
  records += [(f"data/{i}", a.reshape(-1).view(np.uint8)) for i, a in enumerate(arrays)]
  records.append(("version", b"3\n"))
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "wb") as f:
      _write_zip(f, records)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    raise PthError(f"{path}: cannot write file ({e.strerror or _one_line(e)})") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
