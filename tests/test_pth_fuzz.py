"""detr_jax.torch_io.pth under fuzzing: mutated real checkpoints give a PthError or a clean result.

Every mutant of the real-torch fixtures (bit flips, truncations, moved bytes, lying zip sizes and
offsets, ZIP64 fields, pickles with huge lengths, sizes, strides, offsets, memo indices, MARK
stacks, deep nesting and hostile globals) is loaded in a worker process with a memory limit. Each
load must end in one PthError line naming the file, or in plain dicts/lists/arrays; never another
exception, a crash, a slow load, or a payload that runs (a sentinel file would appear).

Longer runs by hand: python tests/test_pth_fuzz.py --count 20000 [--seed 1] [--keep DIR]
"""
import argparse
import collections
import io
import json
import os
import pickle
import pickletools
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures" / "pth"
SEED_FILES = ["state_zip.pth", "checkpoint_zip.pth", "state_legacy.pth", "checkpoint_legacy.pth"]
MEMORY_HEADROOM = 512 << 20  # a load may grow the worker's address space by this much
LOAD_SECONDS = 2.0  # slowest load allowed (a few ms each in practice)
SENTINEL = "pwned"  # what hostile payloads would create, next to the mutants

# ----------------------------------------------------------------------------- seeds


def zip64_archive(records) -> bytes:
  """A stored zip whose sizes and offsets all live in ZIP64 extra fields and a ZIP64 end record."""
  out, central = io.BytesIO(), []
  for name, data in records:
    name, crc, offset = name.encode(), zlib.crc32(data), out.tell()
    out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, 2**32 - 1, 2**32 - 1,
                          len(name), 20) + name + struct.pack("<HHQQ", 1, 16, len(data), len(data)) + data)
    central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, 2**32 - 1,
                               2**32 - 1, len(name), 28, 0, 0, 0, 0, 2**32 - 1)
                   + name + struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset))
  cd_offset, cd = out.tell(), b"".join(central)
  out.write(cd)
  end64 = out.tell()
  out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(records), len(records), len(cd),
                        cd_offset))
  out.write(struct.pack("<IIQI", 0x07064B50, 0, end64, 1))
  out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 2**32 - 1, 2**32 - 1, 0))
  return out.getvalue()


def zip_records(data: bytes):
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    return [(info.filename, archive.read(info)) for info in archive.infolist()]


def stored_zip(records) -> bytes:
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as archive:
    for name, data in records:
      archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
  return out.getvalue()


def seeds():
  """name -> bytes: the fixtures, and state_zip.pth rewritten as ZIP64."""
  out = {name: (FIXTURES / name).read_bytes() for name in SEED_FILES}
  out["state_zip64.pth"] = zip64_archive(zip_records(out["state_zip.pth"]))
  return out


def pickle_spans(data: bytes, start: int = 0):
  """[(start, end)] of the consecutive pickles from start (5 in a legacy file, then storage data)."""
  spans, stream = [], io.BytesIO(data)
  stream.seek(start)
  while len(spans) < 5 and stream.tell() < len(data):
    first = stream.tell()
    try:
      for _ in pickletools.genops(stream):
        pass
    except ValueError:
      break
    spans.append((first, stream.tell()))
  return spans


def opcodes(pkl: bytes):
  """[(opcode, arg, start, end)] of a valid pickle."""
  ops = list(pickletools.genops(pkl))
  ends = [pos for _, _, pos in ops[1:]] + [len(pkl)]
  return [(op, arg, pos, end) for (op, arg, pos), end in zip(ops, ends)]

# ----------------------------------------------------------------------------- mutations


INTERESTING_INTS = [0, 1, 2, 3, 255, 256, 65535, -1, -2**31, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
                    2**62, 2**63 - 1, 2**63, 2**64 + 1, 10**40, 2**1000]


def interesting(rng, nbytes: int, old: int) -> int:
  top = 2**(8 * nbytes) - 1
  return rng.choice([0, 1, top, top - 1, top // 2, top // 2 + 1, min(old + 1, top), max(old - 1, 0),
                     min(old * 2, top), rng.randrange(top + 1)])


def encode_int(value: int) -> bytes:
  """The pickle opcode for an int, as CPython writes it."""
  if 0 <= value < 256:
    return b"K" + bytes([value])
  if 0 <= value < 65536:
    return b"M" + struct.pack("<H", value)
  if -2**31 <= value < 2**31:
    return b"J" + struct.pack("<i", value)
  raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
  return (b"\x8a" + bytes([len(raw)]) if len(raw) < 256 else b"\x8b" + struct.pack("<i", len(raw))) + raw


def hostile_chunks(sentinel: str):
  """Opcode runs to splice into a pickle: payloads that must be refused and resource bombs."""
  command = f"touch {sentinel}".encode()
  code = f"open({sentinel!r}, 'w').close()".encode()
  text = lambda raw: b"X" + struct.pack("<I", len(raw)) + raw
  return [
      b"cos\nsystem\n" + text(command) + b"\x85R",  # GLOBAL + REDUCE
      b"\x8c\x08builtins\x8c\x04eval\x93" + text(code) + b"\x85R",  # STACK_GLOBAL
      b"(" + text(command) + b"ios\nsystem\n",  # INST
      b"(cos\nsystem\n" + text(command) + b"o",  # OBJ
      b"cbuiltins\nexec\n" + text(code) + b"\x85R",
      b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00",  # EXT1/2/4
      b"P0\n", b"(X\x07\x00\x00\x00storageX\x02\x00\x00\x00../X\x03\x00\x00\x00cputQ", text(b"x") + b"Q",
      b"ctorch\nSize\n(N}(X\x0c\x00\x00\x00__defaults__)utb",  # BUILD slot state on an allowed function
      b"cargparse\nNamespace\n(N}(X\t\x00\x00\x00__class__ccollections\nOrderedDict\nutb",  # ... on a class
      b"ctorch._utils\n_rebuild_tensor_v2\n}b",  # BUILD with a dict on an allowed function
      b"(" * 100000,  # huge MARK stack
      b"]" * 30000 + b"a" * 29999,  # deep list
      b"}N" + b"\x85" * 200000 + b"Ns",  # 200000-deep tuple as a dict key (hashing it crashes CPython)
      b"N" + b"\x85" * 5000,
      b"\x8d" + struct.pack("<Q", 2**62) + b"abc", b"\x8e" + struct.pack("<Q", 2**40) + b"abc",
      b"\x96" + struct.pack("<Q", 2**33), b"X" + struct.pack("<I", 2**32 - 1), b"B" + struct.pack("<I", 2**31),
      b"\x8b" + struct.pack("<i", 2**31 - 1), b"T" + struct.pack("<i", -1), b"\x95" + struct.pack("<Q", 2**62),
      b"Nr" + struct.pack("<I", 2**32 - 1), b"j" + struct.pack("<I", 12345), b"p99999999999\n",
      b"\x8a\xff" + b"\xff" * 255, b"I" + b"9" * 5000 + b"\n", b"\x80\x05", b"\x80\xff",
      b"\x97", b"N\x98", b"(t" * 2000, b"]" + b"2" * 10000,
  ]


def mutate_bytes(rng, data: bytes, hostile) -> tuple:
  """A byte-level mutation of data; returns (recipe, mutant)."""
  buf, n = bytearray(data), len(data)
  kind = rng.choice(["flip", "flip", "set", "truncate", "swap", "delete", "duplicate", "insert"])
  i, j = sorted(rng.randrange(n) for _ in range(2))
  if kind == "flip":
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
      buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
  elif kind == "set":
    for _ in range(rng.randint(1, 4)):
      buf[rng.randrange(n)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
  elif kind == "truncate":
    del buf[rng.randrange(n):]
  elif kind == "swap":
    k = rng.randint(1, 16)
    buf[i:i + k], buf[j:j + k] = buf[j:j + k], buf[i:i + k]
  elif kind == "delete":
    del buf[i:i + rng.randint(1, 64)]
  elif kind == "duplicate":
    buf[j:j] = buf[i:i + rng.randint(1, 64)]
  else:
    buf[i:i] = rng.randbytes(rng.randint(1, 16)) if rng.random() < 0.7 else rng.choice(hostile)
  return f"bytes.{kind}", bytes(buf)


ZIP_FIELDS = {  # signature -> {field: (offset, size)}
    b"PK\x03\x04": {"flags": (6, 2), "method": (8, 2), "crc": (14, 4), "csize": (18, 4), "usize": (22, 4),
                    "namelen": (26, 2), "extralen": (28, 2)},
    b"PK\x01\x02": {"flags": (8, 2), "method": (10, 2), "crc": (16, 4), "csize": (20, 4), "usize": (24, 4),
                    "namelen": (28, 2), "extralen": (30, 2), "commentlen": (32, 2), "disk": (34, 2),
                    "offset": (42, 4)},
    b"PK\x05\x06": {"disk": (4, 2), "cd_disk": (6, 2), "entries_disk": (8, 2), "entries": (10, 2),
                    "cd_size": (12, 4), "cd_offset": (16, 4), "commentlen": (20, 2)},
    b"PK\x06\x06": {"record_size": (4, 8), "entries_disk": (24, 8), "entries": (32, 8), "cd_size": (40, 8),
                    "cd_offset": (48, 8)},
    b"PK\x06\x07": {"disk": (4, 4), "end64_offset": (8, 8), "disks": (16, 4)},
}


def zip_fields(data: bytes):
  """[(name, offset, size)] of every header field, ZIP64 extra values included, found in data."""
  fields = []
  for signature, layout in ZIP_FIELDS.items():
    start = data.find(signature)
    while start >= 0:
      fields += [(f"{signature[2:].hex()}.{name}", start + at, size) for name, (at, size) in layout.items()]
      if signature in (b"PK\x03\x04", b"PK\x01\x02"):
        head = 30 if signature == b"PK\x03\x04" else 46
        namelen_at, extralen_at = layout["namelen"][0], layout["extralen"][0]
        namelen, extralen = struct.unpack_from("<HH", data, start + namelen_at) if start + extralen_at + 2 <= len(
            data) else (0, 0)
        extra = start + head + namelen
        while extra + 4 <= min(start + head + namelen + extralen, len(data)):
          tag, length = struct.unpack_from("<HH", data, extra)
          if tag == 1:
            fields += [(f"zip64_extra.{k}", extra + 4 + 8 * k, 8) for k in range(length // 8)]
          extra += 4 + length
      start = data.find(signature, start + 1)
  return [(name, at, size) for name, at, size in fields if at + size <= len(data)]


def mutate_zip_field(rng, data: bytes) -> tuple:
  buf = bytearray(data)
  name, at, size = rng.choice(zip_fields(data))
  old = int.from_bytes(buf[at:at + size], "little")
  buf[at:at + size] = interesting(rng, size, old).to_bytes(size, "little")
  return f"zip.{name}", bytes(buf)


def mutate_pickle(rng, pkl: bytes, hostile) -> tuple:
  """An opcode-level mutation of a valid pickle; returns (recipe, mutant pickle)."""
  ops = opcodes(pkl)
  kind = rng.choice(["int", "int", "int", "length", "insert", "insert", "drop", "dup", "swap", "flip"])
  ints = [o for o in ops if o[0].name in ("BININT", "BININT1", "BININT2", "LONG1", "NEWFALSE")]
  if kind == "int" and ints:
    _, _, start, end = rng.choice(ints)
    return "pickle.int", pkl[:start] + encode_int(rng.choice(INTERESTING_INTS)) + pkl[end:]
  if kind == "length":
    counted = [o for o in ops if o[0].arg is not None and o[0].arg.n in (pickletools.TAKEN_FROM_ARGUMENT1,
                                                                          pickletools.TAKEN_FROM_ARGUMENT4,
                                                                          pickletools.TAKEN_FROM_ARGUMENT4U,
                                                                          pickletools.TAKEN_FROM_ARGUMENT8U)]
    if counted:
      op, _, start, _ = rng.choice(counted)
      size = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT8U: 8}.get(op.arg.n, 4)
      old = int.from_bytes(pkl[start + 1:start + 1 + size], "little")
      new = interesting(rng, size, old).to_bytes(size, "little")
      return "pickle.length", pkl[:start + 1] + new + pkl[start + 1 + size:]
  _, _, start, end = rng.choice(ops[1:-1])
  if kind == "insert":
    return "pickle.insert", pkl[:start] + rng.choice(hostile) + pkl[start:]
  if kind == "drop":
    return "pickle.drop", pkl[:start] + pkl[end:]
  if kind == "dup":
    return "pickle.dup", pkl[:end] + pkl[start:end] + pkl[end:]
  if kind == "swap":
    _, _, start2, end2 = rng.choice(ops[1:-1])
    (a, b), (c, d) = sorted([(start, end), (start2, end2)])
    if b <= c:
      return "pickle.swap", pkl[:a] + pkl[c:d] + pkl[b:c] + pkl[a:b] + pkl[d:]
  buf = bytearray(pkl)
  buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
  return "pickle.flip", bytes(buf)


def mutant(seed_data: dict, seed: int, index: int, sentinel: str) -> tuple:
  """Deterministic mutant number index: (recipe, bytes)."""
  rng = random.Random(f"{seed}:{index}")
  name = rng.choice(sorted(seed_data))
  data = seed_data[name]
  hostile = hostile_chunks(sentinel)
  is_zip = data.startswith(b"PK")
  kind = rng.choice(["bytes", "bytes", "zip" if is_zip else "bytes", "pickle", "pickle", "pickle", "storage"])
  if kind == "bytes":
    recipe, out = mutate_bytes(rng, data, hostile)
  elif kind == "zip":
    recipe, out = mutate_zip_field(rng, data)
  elif is_zip:  # mutate a record and repack, so that the CRC holds and the mutation reaches the reader
    records = zip_records(data)
    pick = [i for i, (n, _) in enumerate(records) if (n.endswith("data.pkl")) == (kind == "pickle")]
    i = rng.choice(pick)
    record_name, record = records[i]
    if kind == "pickle":
      recipe, record = mutate_pickle(rng, record, hostile)
    else:
      recipe, record = mutate_bytes(rng, record, hostile) if record else ("storage.empty", b"")
      recipe = recipe.replace("bytes.", "storage.")
    records[i] = (record_name, record)
    out = stored_zip(records) if rng.random() < 0.8 else zip64_archive(records)
  else:  # legacy: mutate one of the five pickles in place, or the storage element counts after them
    spans = pickle_spans(data)
    if kind == "pickle":
      start, end = spans[3] if rng.random() < 0.7 else rng.choice(spans)
      recipe, pkl = mutate_pickle(rng, data[start:end], hostile)
      out = data[:start] + pkl + data[end:]
    else:
      at = spans[-1][1] if rng.random() < 0.5 else rng.randrange(spans[-1][1], len(data) - 8)
      value = rng.choice(INTERESTING_INTS) % 2**64
      out, recipe = data[:at] + value.to_bytes(8, "little") + data[at + 8:], "storage.count"
  return f"{name}:{recipe}", out

# ----------------------------------------------------------------------------- worker


def check_public(obj) -> None:
  """Raises AssertionError unless obj is plain data: containers, scalars, owning C arrays."""
  todo, seen = [obj], set()
  while todo:
    value = todo.pop()
    if id(value) in seen:
      continue
    seen.add(id(value))
    if isinstance(value, np.ndarray):
      assert value.flags.c_contiguous and value.flags.owndata, "array that is a view"
    elif type(value) is dict:
      todo += list(value) + list(value.values())
    elif type(value) in (list, tuple, set, frozenset):
      todo += list(value)
    elif type(value) is argparse.Namespace:
      todo += list(vars(value).values())
    else:
      assert type(value) in (type(None), bool, int, float, complex, str, bytes, bytearray), type(value)


def worker(paths_file: str, results_file: str) -> None:
  """Loads the paths listed in paths_file under a memory limit; one JSON line per load in results_file."""
  from detr_jax.torch_io.pth import PthError, load_pth  # pylint: disable=import-outside-toplevel
  load_pth(FIXTURES / "state_zip.pth")  # imports what loading needs (ml_dtypes), outside the limit and the clock
  if os.path.exists("/proc/self/statm"):  # Linux: the address space in use now
    with open("/proc/self/statm") as f:
      in_use = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (in_use + MEMORY_HEADROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))
  with open(paths_file) as paths, open(results_file, "w") as out:
    for path in paths.read().splitlines():
      start = time.perf_counter()
      try:
        check_public(load_pth(path))
        outcome, message = "ok", ""
      except PthError as e:  # any other exception ends the worker with its traceback: run_workers reports it
        outcome, message = "PthError", str(e)
      out.write(json.dumps({"path": path, "outcome": outcome, "message": message,
                            "seconds": time.perf_counter() - start}) + "\n")
      out.flush()


def run_workers(paths, processes: int = 2, timeout: float = 300):
  """Loads paths in worker processes; returns {path: result} and a note for each worker that died or hung."""
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
  env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
  with tempfile.TemporaryDirectory() as tmp:
    jobs = []
    for i in range(processes):
      shard, files = paths[i::processes], [os.path.join(tmp, f"{i}.{kind}") for kind in ("in", "out", "err")]
      Path(files[0]).write_text("".join(f"{p}\n" for p in shard))
      with open(files[2], "w") as err:
        jobs.append((subprocess.Popen([sys.executable, __file__, "--worker", *files[:2]], stderr=err, env=env),
                     shard, files))
    results, deaths = {}, []
    deadline = time.monotonic() + timeout
    for proc, shard, (_, out, err) in jobs:
      try:
        proc.wait(max(deadline - time.monotonic(), 1))
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      done = [json.loads(line) for line in Path(out).read_text().splitlines()] if os.path.exists(out) else []
      results.update((r["path"], r) for r in done)
      if proc.returncode != 0 or len(done) < len(shard):
        culprit = shard[len(done)] if len(done) < len(shard) else None
        deaths.append(f"worker exit {proc.returncode} while loading {culprit}: {Path(err).read_text()[-2000:]}")
  return results, deaths


def fuzz(directory: Path, count: int, seed: int, processes: int = 2, batch: int = 2000):
  """Writes and loads count mutants in directory; returns (recipes, results, deaths)."""
  seed_data = seeds()
  sentinel = str(directory / SENTINEL)
  recipes, results, deaths = {}, {}, []
  for first in range(0, count, batch):
    paths = []
    for index in range(first, min(first + batch, count)):
      recipe, data = mutant(seed_data, seed, index, sentinel)
      path = directory / f"{index:06d}.pth"
      path.write_bytes(data)
      recipes[str(path)] = recipe
      paths.append(str(path))
    got, died = run_workers(paths, processes)
    results.update(got)
    deaths += died
  return recipes, results, deaths


def problems(recipes, results, deaths, sentinel: Path):
  """Every way the run broke the rules, as lines."""
  lines = list(deaths)
  if sentinel.exists():
    lines.append(f"a payload ran: {sentinel} exists")
  for path, recipe in recipes.items():
    r = results.get(path)
    if r is None:
      continue
    if r["outcome"] == "PthError" and (not r["message"].startswith(f"{path}: ") or "\n" in r["message"] or
                                        len(r["message"]) > 600):
      lines.append(f"{path} ({recipe}): not one short line naming the file: {r['message'][:1000]!r}")
    if r["seconds"] > LOAD_SECONDS:
      lines.append(f"{path} ({recipe}): took {r['seconds']:.1f} s")
  return lines

# ----------------------------------------------------------------------------- tests


def test_zip64_seed_is_read_like_the_original():
  from detr_jax.torch_io import load_pth  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "zip64.pth"
    data = seeds()["state_zip64.pth"]
    path.write_bytes(data)
    got, want = load_pth(path), load_pth(FIXTURES / "state_zip.pth")
  assert list(got) == list(want) and all(got[k].tobytes() == want[k].tobytes() for k in want)
  with zipfile.ZipFile(io.BytesIO(data)) as archive:  # every size and offset is in a ZIP64 field
    assert all(info.extra[:4] == b"\x01\x00\x18\x00" for info in archive.infolist())
  assert struct.unpack("<HHII", data[-14:-2]) == (0xFFFF, 0xFFFF, 2**32 - 1, 2**32 - 1)


def test_mutants_are_deterministic_and_varied():
  seed_data = seeds()
  a = [mutant(seed_data, 0, i, "/s") for i in range(200)]
  assert a == [mutant(seed_data, 0, i, "/s") for i in range(200)]
  kinds = collections.Counter(recipe.split(":")[1].split(".")[0] for recipe, _ in a)
  assert set(kinds) == {"bytes", "zip", "pickle", "storage"} and min(kinds.values()) >= 15, kinds
  assert len({data for _, data in a}) >= 190  # nearly all differ


def test_fuzzed_checkpoints_raise_pth_error_or_load(tmp_path):
  count = 600
  recipes, results, deaths = fuzz(tmp_path, count, seed=0)
  found = problems(recipes, results, deaths, tmp_path / SENTINEL)
  assert not found, "\n".join(found[:5])
  assert len(results) == count
  outcomes = collections.Counter(r["outcome"] for r in results.values())
  assert outcomes["PthError"] >= count // 2 and outcomes["ok"] >= 20, outcomes
  messages = " ".join(r["message"] for r in results.values())
  for fragment in ("corrupt zip", "not allowed (torch never writes it)", "forbidden global", "nested more than",
                   "overruns its storage", "4x the file's storage bytes + 64 MiB", "that the file does not hold",
                   "not a torch file", "truncated"):  # the mutations reach every layer of the reader
    assert fragment in messages, fragment


def protocol2(*parts: bytes) -> bytes:
  return b"\x80\x02" + b"".join(parts) + b"."


def text(value: str) -> bytes:
  raw = value.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def tensor(key: str, numel: int, size, stride, offset: int = 0) -> bytes:
  """A float32 tensor's opcodes as torch.save writes them: _rebuild_tensor_v2(storage, offset, size, stride...)."""
  ints = lambda values: b"(" + b"".join(encode_int(v) for v in values) + b"t"
  return (b"ctorch._utils\n_rebuild_tensor_v2\n((" + text("storage") + b"ctorch\nFloatStorage\n" + text(key)
          + text("cpu") + encode_int(numel) + b"tQ" + encode_int(offset) + ints(size) + ints(stride)
          + b"\x89ccollections\nOrderedDict\n)RtR")


def torch_zip(pkl: bytes, storages=()) -> bytes:
  return stored_zip([("archive/data.pkl", pkl)] + [(f"archive/data/{key}", data) for key, data in storages])


def memo(opcode: str, index: int) -> bytes:
  return {"put": b"r", "get": b"j"}[opcode] + struct.pack("<I", index)


def bombs():
  """name -> (file bytes, what the PthError must say): files that try to exhaust memory, time or the stack."""
  chain = b"".join(b"]" + memo("put", i) + b"0" for i in range(1000))  # 1000 lists, then l[i].append(l[i+1])
  chain += b"".join(memo("get", i) + memo("get", i + 1) + b"a0" for i in range(999)) + memo("get", 0)
  doubling = b"K\x01\x85" + memo("put", 0) + b"0"  # t[i+1] = (t[i], t[i]): hashing t[60] visits 2^61 tuples
  doubling += b"".join(memo("get", i) + memo("get", i) + b"\x86" + memo("put", i + 1) + b"0" for i in range(60))
  flood = b"".join(encode_int(k * (2**61 - 1)) + b"N" for k in range(1, 20000))  # ints with one hash
  one_mib = np.arange(1 << 18, dtype=np.float32).tobytes()
  zip64 = bytearray(zip64_archive([("archive/data.pkl", protocol2(b"N"))]))
  at = zip64.index(b"PK\x01\x02") + 46 + len("archive/data.pkl") + 4  # its central ZIP64 sizes
  zip64[at:at + 16] = struct.pack("<QQ", 2**62, 2**62)
  deflated = io.BytesIO()
  with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("archive/data.pkl", protocol2(b"N" * 100000 + b"0" * 99999))
  legacy_header = b"".join(pickle.dumps(v, protocol=2) for v in (
      0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
  return {
      "deep tuple as a dict key": (torch_zip(protocol2(b"}N" + b"\x85" * 10**6 + b"Ns")), "nested more than 100"),
      "a million MARKs": (torch_zip(protocol2(b"(" * 10**6 + b"N")), "more than 100 open MARKs"),
      "memo index 2^32-1": (torch_zip(protocol2(b"N" + memo("put", 2**32 - 1))), "bad memo index 4294967295"),
      "BINBYTES8 of 2^40 bytes": (torch_zip(protocol2(b"\x8e" + struct.pack("<Q", 2**40))), "in a bytes8"),
      "BINUNICODE of 2^32-1 bytes": (torch_zip(protocol2(b"X" + struct.pack("<I", 2**32 - 1))), "unicodestring4"),
      "FRAME of 2^63 bytes": (torch_zip(b"\x80\x04\x95" + struct.pack("<Q", 2**63) + b"N."), "runs past the end"),
      "LONG4 of 2^31-1 bytes": (torch_zip(protocol2(b"\x8b" + struct.pack("<i", 2**31 - 1))), "long4"),
      "1000 lists nested through the memo": (torch_zip(protocol2(chain)), "nested more than 100"),
      "a tuple key of 2^61 parts": (torch_zip(protocol2(b"}" + doubling + memo("get", 60) + b"Ns")),
                                    "small tuples"),
      "20000 keys with one hash": (torch_zip(protocol2(b"}(" + flood + b"u")), "hash flooding"),
      "one float expanded to 2^62": (torch_zip(protocol2(tensor("0", 1, (2**31, 2**31), (0, 0))),
                                               [("0", one_mib[:4])]), "4x the file's storage bytes + 64 MiB"),
      "1000 views of 1 MiB": (torch_zip(protocol2(b"](" + tensor("0", 1 << 18, (1 << 18,), (1,)) * 1000 + b"e"),
                                       [("0", one_mib)]), "4x the file's storage bytes + 64 MiB"),
      "storage of 2^62 floats": (torch_zip(protocol2(tensor("0", 2**62, (1,), (1,))), [("0", one_mib[:4])]),
                                 "holds 4 bytes, expected 18446744073709551616"),
      "legacy storage of 2^62 floats": (legacy_header + protocol2(tensor("0", 2**62, (1,), (1,)))
                                        + pickle.dumps(["0"], protocol=2) + struct.pack("<q", 2**62) + one_mib[:4],
                                        "truncated legacy stream: storage '0' needs 18446744073709551616 bytes"),
      "ZIP64 record size 2^62": (bytes(zip64), "claims 4611686018427387904 bytes that the file does not hold"),
      "deflated record": (deflated.getvalue(), "compressed or encrypted"),
  }


def test_bombs_are_refused_within_memory_and_time(tmp_path):
  cases = bombs()
  paths = {}
  for i, (name, (data, _)) in enumerate(cases.items()):
    paths[name] = str(tmp_path / f"bomb{i}.pth")
    Path(paths[name]).write_bytes(data)
  results, deaths = run_workers(list(paths.values()))
  assert not deaths, deaths
  for name, (_, fragment) in cases.items():
    r = results[paths[name]]
    assert r["outcome"] == "PthError" and fragment in r["message"], (name, r["message"][-3000:])
    assert r["seconds"] < LOAD_SECONDS, (name, r["seconds"])


if __name__ == "__main__":
  if sys.argv[1:2] == ["--worker"]:
    worker(*sys.argv[2:])
    sys.exit(0)
  parser = argparse.ArgumentParser(description="Fuzz detr_jax.torch_io.pth for longer than the test does.")
  parser.add_argument("--count", type=int, default=20000)
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--keep", help="directory for the mutants (default: a temporary one, removed)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    where = Path(args.keep or tmp)
    where.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    recipes_, results_, deaths_ = fuzz(where, args.count, args.seed, args.processes)
    found_ = problems(recipes_, results_, deaths_, where / SENTINEL)
    print(f"{len(results_)} loads in {time.perf_counter() - began:.0f} s: "
          f"{dict(collections.Counter(r['outcome'] for r in results_.values()))}, slowest "
          f"{max(r['seconds'] for r in results_.values()):.3f} s")
    by_error = collections.Counter(r["message"].split(": ", 1)[-1].split(" (")[0][:70]
                                   for r in results_.values() if r["outcome"] == "PthError")
    for message, n in by_error.most_common(40):
      print(f"{n:7d}  {message}")
    print("\n".join(found_) or "no problems")
    sys.exit(1 if found_ else 0)
