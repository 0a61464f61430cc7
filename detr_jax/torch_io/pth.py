"""Safe, torch-free reader and writer for PyTorch .pth files. numpy only.

Reads torch.save's zip format (torch >= 1.6) and its legacy stream format (older torch). Every
pickle is first walked opcode by opcode (pickletools, nothing built) and refused if it could make
the unpickler allocate, recurse or hash without bound; then an unpickler that only knows a short
allow-list of globals builds it, so nothing a file names can run. Sizes read from the file are
checked against the bytes it holds before anything is allocated. Any malformed file raises
PthError, a UserError with one line naming the file and the problem. Writes the zip format that
torch.load reads with weights_only=True and mmap=True.
"""
import argparse
import io
import math
import os
import pickle
import pickletools
import reprlib
import stat
import struct
import sys
import zipfile
from collections import OrderedDict

import numpy as np

from detr_jax.errors import UserError
from detr_jax.files import written_whole

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


class PthError(UserError):
  """A .pth file that cannot be read or written; the one-line message names the file and why."""


def _dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=import-outside-toplevel
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def _one_line(e: BaseException) -> str:
  text = " ".join(f"{type(e).__name__}: {e}".split())
  return text if len(text) <= 200 else text[:200] + "..."


class _BriefRepr(reprlib.Repr):
  """reprlib.Repr that also shortens huge integers (repr refuses ints of more than 4300 digits)."""

  def repr_int(self, x, level):
    return repr(x) if x.bit_length() <= 128 else f"<{x.bit_length()}-bit int>"


_brief = _BriefRepr().repr  # short one-line repr of a value read from a file, for error messages


# ----------------------------------------------------------------------------- reading

_MAX_NESTING = 100  # deepest nesting read (torch files nest < 10; hashing a 10^6-deep tuple crashes CPython)
_MAX_DIMS = 32  # numpy 1.x's limit
_MAX_EXPANSION = 4  # the arrays returned may hold this many times the file's storage bytes, plus the slack
_EXPANSION_SLACK = 1 << 26  # (views of one storage are each copied; a zero stride repeats elements)
_REFUSED_OPCODES = {  # torch never writes these; they reach copyreg's registry, or need out-of-band data
    "EXT1", "EXT2", "EXT4", "INST", "OBJ", "PERSID", "NEWOBJ_EX", "NEXT_BUFFER", "READONLY_BUFFER"}
_MUTATING_OPCODES = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # result: the first operand
_PUT_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPCODES = {"GET", "BINGET", "LONG_BINGET"}
_KEY_OPERANDS = {"SETITEM": slice(1, None, 2), "SETITEMS": slice(1, None, 2), "DICT": slice(0, None, 2),
                 "ADDITEMS": slice(1, None), "FROZENSET": slice(None)}  # what the unpickler hashes
_NUMBER_OPCODES = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"}
_CONSTANT_OPCODES = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_TEXT_OPCODES = {"STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "UNICODE",
                 "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
_TUPLE_OPCODES = {"EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET"}
_STACK_EFFECTS = {  # opcode -> (operands taken, how many of them lie below the MARK or None, results pushed)
    op.name: (len(op.stack_before), op.stack_before.index(pickletools.markobject)
              if pickletools.markobject in op.stack_before else None, len(op.stack_after))
    for op in pickletools.opcodes}
_TEXT, _OTHER = object(), object()  # _check_pickle's values for a str or bytes, and for what cannot be a key
_MAX_COLLISIONS = 64  # distinct dict keys with one hash
_SCALARS = (type(None), bool, int, float, str, bytes, bytearray)


class _Sealed:
  """Refuses pickle's BUILD: a file must not set attributes of the reader's objects."""
  __slots__ = ()

  def __setstate__(self, state):
    raise PthError(f"pickle sets the state of a {type(self).__name__.strip('_')} (BUILD)")


class _OrderedDict(dict):
  """collections.OrderedDict stand-in; attributes torch sets on state dicts (_metadata) are dropped."""

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise PthError(f"bad OrderedDict state {_brief(state)}")


class _Namespace:
  """argparse.Namespace stand-in: the unpickler can only set its attributes (BUILD with a dict)."""

  def __setstate__(self, state):
    if not isinstance(state, dict) or not all(type(key) is str for key in state):
      raise PthError(f"bad argparse.Namespace state {_brief(state)}")
    vars(self).update(state)


class _Storage(_Sealed):
  """One torch storage: dtype, element count and, once read, its data as a 1-D array."""
  __slots__ = ("dtype", "numel", "array")

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel, self.array = dtype, numel, None


class _Tensor(_Sealed):
  """A tensor's strided view of a storage; becomes an owning array once all storages are read."""
  __slots__ = ("storage", "offset", "size", "stride")
  __hash__ = None

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def array(self, max_bytes: int) -> np.ndarray:
    """Checks the geometry against the storage's data and max_bytes, then copies the tensor out."""
    base = self.storage.array if isinstance(self.storage, _Storage) else None
    if base is None:
      raise PthError(f"tensor rebuilt from {_brief(self.storage)}, not a storage")
    offset, size, stride = self.offset, self.size, self.stride
    ints = lambda t: isinstance(t, tuple) and all(type(v) is int and v >= 0 for v in t)
    if not ints((offset,)) or not ints(size) or not ints(stride) or len(size) != len(stride) or (
        len(size) > _MAX_DIMS):
      raise PthError(f"bad tensor geometry (offset {_brief(offset)}, size {_brief(size)}, "
                     f"stride {_brief(stride)})")
    nbytes = math.prod(max(n, 1) for n in size) * base.itemsize  # empty: what numpy checks all the same
    if nbytes > max_bytes:
      raise PthError(f"tensor of size {_brief(size)} needs {nbytes} bytes: the arrays read would hold more than "
                     f"{_MAX_EXPANSION}x the file's storage bytes + {_EXPANSION_SLACK >> 20} MiB")
    if 0 in size:
      return np.zeros(size, base.dtype)
    if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= base.size:
      raise PthError(f"tensor (offset {offset}, size {size}, stride {_brief(stride)}) overruns its storage "
                     f"of {base.size} elements")
    strides = [s * base.itemsize if n > 1 else 0 for n, s in zip(size, stride)]  # any stride for size 1
    return np.array(np.lib.stride_tricks.as_strided(base[offset:], size, strides), order="C")


class _Global(_Sealed):
  """An allow-listed function as the unpickler sees it: callable, but BUILD cannot change it."""
  __slots__ = ("function",)

  def __init__(self, function):
    self.function = function

  def __call__(self, *args):
    return self.function(*args)


class _StorageType(_Sealed, str):
  """Marker for a torch.<Type>Storage global; only meaningful inside a persistent id."""
  __slots__ = ()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  if not isinstance(data, _Tensor):
    raise PthError(f"parameter rebuilt from {_brief(data)}, not a tensor")
  return data


def _ordered_dict():
  return _OrderedDict()


def _size(dims):
  if not isinstance(dims, (tuple, list)) or not all(type(n) is int for n in dims):
    raise PthError(f"bad torch.Size({_brief(dims)})")
  return tuple(dims)


def _device(kind, index=None):
  if not isinstance(kind, str) or not (index is None or type(index) is int):
    raise PthError(f"bad torch.device({_brief(kind)}, {_brief(index)})")
  return kind if index is None else f"{kind}:{index}"


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _Global(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Global(_rebuild_parameter),
    ("collections", "OrderedDict"): _Global(_ordered_dict),
    ("argparse", "Namespace"): _Namespace,
    ("torch", "Size"): _Global(_size),
    ("torch", "device"): _Global(_device),
}


class _Unpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals and 'storage' persistent ids."""

  def __init__(self, stream, load_storage=None):
    super().__init__(stream)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) in _GLOBALS:
      return _GLOBALS[module, name]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "torch" and name.endswith("Storage"):
      raise PthError(f"unsupported dtype: storage type 'torch.{_brief(name)[1:-1]}'")
    raise PthError(f"forbidden global {_brief(f'{module}.{name}')} (refused before anything ran)")

  def persistent_load(self, pid):
    if self._load_storage is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      kind = pid[0] if isinstance(pid, tuple) and pid else pid
      raise PthError(f"unknown persistent id kind {_brief(kind)}")
    if len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType) or type(pid[2]) is not str or (
        type(pid[4]) is not int or pid[4] < 0):
      raise PthError(f"malformed storage persistent id {_brief(pid)}")
    if len(pid) == 6 and pid[5] is not None:
      raise PthError(f"storage views (pre-1.0 files) are not supported: {_brief(pid)}")
    return self._load_storage(_dtype(_STORAGE_DTYPES[pid[1]]), pid[2], pid[4])


def _check_pickle(stream: io.BytesIO) -> int:
  """Walks the opcodes of the pickle at the stream's position, building nothing; returns its end.

  Refuses what the C unpickler would turn into code lookups, huge allocations, deep C recursion or
  quadratic time: opcodes torch never writes, frames past the end, memo indices past the bytes
  read, objects nested more than _MAX_NESTING deep, dict keys and set members other than numbers,
  strings and tuples of them, hashing more key elements than 8 per byte read, and more than
  _MAX_COLLISIONS distinct keys with one hash (int and tuple hashes are predictable). Each stack
  entry stands for an object: (nesting depth, its value if it is a number, _TEXT, a tuple of
  those, or _OTHER, hashing cost). Raises PthError, or ValueError from pickletools (truncated or
  unknown opcodes).
  """
  start = pos = stream.tell()
  size = stream.seek(0, io.SEEK_END)
  stream.seek(start)
  stack, marks, memo, hashes, hash_work, name = [], [], {}, {}, 0, ""
  try:
    for op, arg, pos in pickletools.genops(stream):
      name, fence = op.name, marks[-1] if marks else 0
      if name in _REFUSED_OPCODES:
        raise PthError("not allowed (torch never writes it)")
      if name == "FRAME" and arg > size - pos:
        raise PthError(f"frame of {arg} bytes runs past the end of the data")
      if name == "MARK":
        if len(marks) >= _MAX_NESTING:
          raise PthError(f"more than {_MAX_NESTING} open MARKs")
        marks.append(len(stack))
        continue
      if name == "POP" and len(stack) == fence and marks:  # as the C unpickler does: POP at a mark pops it
        marks.pop()
        continue
      if name in _PUT_OPCODES or name == "MEMOIZE":
        if len(stack) <= fence or (name != "MEMOIZE" and arg > pos - start):
          raise PthError(f"bad memo index {arg} or nothing to memoize")
        memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        continue
      taken, below_mark, pushed = _STACK_EFFECTS[name]
      if below_mark is not None:
        if not marks or marks[-1] > len(stack):
          raise PthError("pickle stack underflow")
        first = marks.pop() - below_mark  # APPENDS' list is below the mark
        fence = marks[-1] if marks else 0
      else:
        first = len(stack) - taken
      if first < fence:
        raise PthError("pickle stack underflow")
      operands = stack[first:]
      del stack[first:]
      for _, value, cost in operands[_KEY_OPERANDS[name]] if name in _KEY_OPERANDS else ():
        hash_work += cost
        if value is _OTHER or hash_work > 8 * (pos - start) + (1 << 20):
          raise PthError("dict keys and set members must be numbers, strings or small tuples of them")
        if value is not _TEXT:  # str and bytes hashes are salted per process
          same_hash = hashes.setdefault(hash(value), set())
          same_hash.add(value)
          if len(same_hash) > _MAX_COLLISIONS:
            raise PthError(f"more than {_MAX_COLLISIONS} dict keys share one hash (hash flooding)")
      if name in _GET_OPCODES:
        if arg not in memo:
          raise PthError(f"memo index {arg} was never set")
        stack.append(memo[arg])
      elif pushed:
        if name in _MUTATING_OPCODES:  # the first operand, changed
          depth = max([operands[0][0]] + [1 + d for d, _, _ in operands[1:]])
        else:
          depth = 1 + max(d for d, _, _ in operands) if operands else 0
        if depth > _MAX_NESTING:
          raise PthError(f"objects nested more than {_MAX_NESTING} deep")
        value, cost = _OTHER, 1
        if name in _NUMBER_OPCODES:
          value = arg
        elif name in _CONSTANT_OPCODES:
          value = _CONSTANT_OPCODES[name]
        elif name in _TEXT_OPCODES:
          value = _TEXT
        elif name in _TUPLE_OPCODES and all(v is not _OTHER for _, v, _ in operands):
          value = (frozenset if name == "FROZENSET" else tuple)(v for _, v, _ in operands)
          cost += sum(c for _, _, c in operands)
        stack.extend([(depth, value, cost)] * pushed)
  except PthError as e:
    raise PthError(f"opcode {name} at byte {pos - start}: {e}") from None
  return stream.tell()


def _unpickle(data: bytes, start: int, what: str, load_storage=None):
  """Checks, then unpickles the pickle at data[start:]; returns the object and the pickle's end.

  Errors name the pickle: what.
  """
  stream = io.BytesIO(data)
  stream.seek(start)
  try:
    end = _check_pickle(stream)
  except PthError as e:
    raise PthError(f"{what}: {e}") from None
  except ValueError as e:  # from pickletools: truncated, unknown opcode, bad argument
    raise PthError(f"{what}: truncated or corrupt ({_one_line(e)})") from None
  try:
    return _Unpickler(io.BytesIO(data[start:end]), load_storage).load(), end
  except PthError as e:
    raise PthError(f"{what}: {e}") from None
  except (pickle.UnpicklingError, TypeError, AttributeError, ValueError, IndexError) as e:  # bad operand types
    raise PthError(f"{what}: corrupt ({_one_line(e)})") from None


def _storage_array(buf, offset: int, dtype: np.dtype, numel: int, byteorder: str) -> np.ndarray:
  array = np.frombuffer(buf, dtype, numel, offset)
  if byteorder != sys.byteorder:
    array = array.view(f"u{dtype.itemsize}").byteswap().view(dtype)
  return array


def _load_zip(f) -> tuple:
  """Returns the unpickled object and the bytes of its storages."""
  file_size = os.fstat(f.fileno()).st_size
  try:
    archive = zipfile.ZipFile(f)
  except (zipfile.BadZipFile, NotImplementedError, UnicodeDecodeError, OSError) as e:  # OSError: seeks before 0
    raise PthError(f"truncated or corrupt zip archive ({_one_line(e)})") from None
  infos = {}
  for info in archive.infolist():
    if infos.setdefault(info.filename, info) is not info:
      raise PthError(f"record {_brief(info.filename)} appears twice in the zip archive")
  pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
  if not pickles:
    raise PthError("zip archive has no '<archive>/data.pkl' record: not a torch file")
  prefix = pickles[0][:-len("data.pkl")]

  def read(name: str, expected_size=None) -> bytes:
    """The record's bytes, checked against the file before anything is allocated."""
    info = infos.get(name)
    if info is None:
      raise PthError(f"missing record {_brief(name)} in zip archive")
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x61:  # encrypted, patched
      raise PthError(f"record {_brief(name)} is compressed or encrypted (torch stores records as they are)")
    if info.compress_size != info.file_size or info.header_offset + 30 + info.file_size > file_size:
      raise PthError(f"record {_brief(name)} claims {info.file_size} bytes that the file does not hold")
    if expected_size is not None and info.file_size != expected_size:
      raise PthError(f"storage record {_brief(name)} holds {info.file_size} bytes, expected {expected_size}")
    try:
      return archive.read(info)
    except (zipfile.BadZipFile, NotImplementedError, UnicodeDecodeError, EOFError, OSError) as e:
      raise PthError(f"corrupt zip record {_brief(name)} ({_one_line(e)})") from None

  byteorder = "little"  # torch's default for files written before the byteorder record existed
  if prefix + "byteorder" in infos:
    byteorder = read(prefix + "byteorder").decode("ascii", "replace")
  if byteorder not in ("little", "big"):
    raise PthError(f"unknown byteorder record {_brief(byteorder)}")
  storages = {}

  def load_storage(dtype: np.dtype, key: str, numel: int) -> _Storage:
    if key not in storages:
      buf = read(f"{prefix}data/{key}", numel * dtype.itemsize)
      storages[key] = _Storage(dtype, numel)
      storages[key].array = _storage_array(buf, 0, dtype, numel, byteorder)
    if storages[key].dtype != dtype or storages[key].numel != numel:
      raise PthError(f"storage {_brief(key)} is used with two dtypes or sizes")
    return storages[key]

  obj, _ = _unpickle(read(prefix + "data.pkl"), 0, f"pickle '{prefix}data.pkl'", load_storage)
  return obj, sum(storage.array.nbytes for storage in storages.values())


def _load_legacy(data: bytes) -> tuple:
  """Returns the unpickled object and the bytes of its storages."""
  try:
    magic, offset = _unpickle(data, 0, "magic number")
  except PthError:
    magic = None
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    raise PthError("not a torch file: neither a zip archive nor a legacy torch stream")
  protocol, offset = _unpickle(data, offset, "legacy stream's protocol version")
  if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
    raise PthError(f"unsupported legacy protocol version {_brief(protocol)}")
  sys_info, offset = _unpickle(data, offset, "legacy stream's sys_info")
  if not isinstance(sys_info, dict) or not isinstance(sys_info.get("little_endian"), bool):
    raise PthError(f"malformed legacy sys_info {_brief(sys_info)}")
  byteorder = "little" if sys_info["little_endian"] else "big"
  storages = {}

  def load_storage(dtype: np.dtype, key: str, numel: int) -> _Storage:
    storage = storages.setdefault(key, _Storage(dtype, numel))
    if storage.dtype != dtype or storage.numel != numel:
      raise PthError(f"storage {_brief(key)} is used with two dtypes or sizes")
    return storage

  obj, offset = _unpickle(data, offset, "legacy stream's main pickle", load_storage)
  keys, offset = _unpickle(data, offset, "legacy stream's storage key list")
  if not isinstance(keys, list):
    raise PthError(f"malformed legacy storage key list {_brief(keys)}")
  for key in keys:
    storage = storages.get(key) if type(key) is str else None
    if storage is None:
      raise PthError(f"legacy storage key list names unknown storage {_brief(key)}")
    if storage.array is not None:
      raise PthError(f"legacy storage key list names storage {_brief(key)} twice")
    if len(data) < offset + 8:
      raise PthError(f"truncated legacy stream: no element count for storage {_brief(key)}")
    numel = int.from_bytes(data[offset:offset + 8], byteorder, signed=True)
    if numel != storage.numel:
      raise PthError(f"legacy storage {_brief(key)} holds {numel} elements, expected {storage.numel}")
    nbytes, offset = numel * storage.dtype.itemsize, offset + 8
    if len(data) < offset + nbytes:
      raise PthError(f"truncated legacy stream: storage {_brief(key)} needs {nbytes} bytes, "
                     f"{len(data) - offset} left")
    storage.array = _storage_array(data, offset, storage.dtype, numel, byteorder)
    offset += nbytes
  missing = [key for key, storage in storages.items() if storage.array is None]
  if missing:
    raise PthError(f"missing storage record {_brief(missing[0])} in legacy stream")
  return obj, sum(storage.array.nbytes for storage in storages.values())


def _finish(obj, storage_bytes: int):
  """Replaces the stand-ins by public results: arrays, plain dicts, argparse.Namespace.

  The arrays hold at most _MAX_EXPANSION times storage_bytes plus _EXPANSION_SLACK bytes in all.
  """
  memo = {}
  budget = _MAX_EXPANSION * storage_bytes + _EXPANSION_SLACK

  def finish(obj, depth: int):
    nonlocal budget
    if type(obj) in _SCALARS:
      return obj
    if id(obj) in memo:
      return memo[id(obj)]
    if depth > _MAX_NESTING:
      raise PthError(f"objects nested more than {_MAX_NESTING} deep")
    if type(obj) is _Tensor:
      out = memo[id(obj)] = obj.array(budget)
      budget -= out.nbytes
    elif isinstance(obj, dict):
      out = memo[id(obj)] = {}
      for key, value in obj.items():  # keys are numbers, strings and tuples of them (_check_pickle)
        out[finish(key, depth + 1)] = finish(value, depth + 1)
    elif type(obj) is list:
      out = memo[id(obj)] = []
      out.extend(finish(value, depth + 1) for value in obj)
    elif type(obj) in (tuple, set, frozenset):
      out = memo[id(obj)] = type(obj)([finish(value, depth + 1) for value in obj])
    elif type(obj) is _Namespace:
      out = memo[id(obj)] = argparse.Namespace()
      vars(out).update((key, finish(value, depth + 1)) for key, value in vars(obj).items())
    else:
      raise PthError(f"unexpected object {_brief(obj)} in the pickle")
    return out

  return finish(obj, 0)


def load_pth(path) -> object:
  """Reads a .pth file (zip or legacy format) without torch.

  Tensors and Parameters become C-contiguous numpy arrays, OrderedDicts plain dicts (same order),
  argparse.Namespace an argparse.Namespace. Raises PthError (a UserError) on any problem.
  """
  path = os.fspath(path)
  try:
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, /dev/zero never end
      raise PthError("not a regular file")
    with open(path, "rb") as f:
      head = f.read(4)
      if not head:
        raise PthError("empty file")
      f.seek(0)
      obj, storage_bytes = _load_zip(f) if head == b"PK\x03\x04" else _load_legacy(f.read())
    return _finish(obj, storage_bytes)
  except PthError as e:
    raise PthError(f"{path}: {e}") from None
  except OSError as e:
    raise PthError(f"{path}: cannot read file ({e.strerror or _one_line(e)})") from None


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
  try:
    with written_whole(path, "wb") as f:
      _write_zip(f, records)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise PthError(f"{path}: cannot write file ({e.strerror or _one_line(e)})") from None
