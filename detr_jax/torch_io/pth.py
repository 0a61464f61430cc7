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
    if not isinstance(storage, _Storage):
      raise PthError("tensor rebuilt from something that is not a storage")
    ints = lambda t: isinstance(t, tuple) and all(type(v) is int and v >= 0 for v in t)
    if type(offset) is not int or offset < 0 or not ints(size) or not ints(stride) or len(size) != len(stride):
      raise PthError(f"bad tensor geometry (offset {offset!r}, size {size!r}, stride {stride!r})")
    if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel:
      raise PthError(f"tensor (offset {offset}, size {size}, stride {stride}) overruns its storage of "
                     f"{storage.numel} elements")
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def array(self) -> np.ndarray:
    dtype = self.storage.dtype
    if 0 in self.size:
      return np.zeros(self.size, dtype)
    view = np.lib.stride_tricks.as_strided(self.storage.array[self.offset:], self.size,
                                           [s * dtype.itemsize for s in self.stride])
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

  def __init__(self, data: bytes, load_storage=None):
    super().__init__(io.BytesIO(data))
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

  byteorder = read(prefix + "byteorder").decode("ascii", "replace") if prefix + "byteorder" in names else "little"
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
    return _Unpickler(read(prefix + "data.pkl"), load_storage).load()
  except PthError:
    raise
  except Exception as e:
    raise PthError(f"corrupt pickle '{prefix}data.pkl' ({_one_line(e)})") from None


def _load_legacy(data: bytes) -> object:
  stream = io.BytesIO(data)

  def unpickle(what: str, load_storage=None):
    unpickler = _Unpickler(b"", load_storage)
    unpickler.__init__(b"", load_storage)  # rebinds below; keeps one code path for the stream
    try:
      return _StreamUnpickler(stream, load_storage).load()
    except PthError:
      raise
    except Exception as e:
      raise PthError(f"{what} ({_one_line(e)})") from None

  del unpickle
  raise NotImplementedError


# ----------------------------------------------------------------------------- writing
