"""The inference forward as an ONNX graph run by onnxruntime (`--runtime onnxruntime`).

jax2onnx traces the very JAX function that `jax.jit` would compile, parameters included as
constants, for one set of input shapes; onnxruntime's CPU provider runs the graph. Build the model
with `build_model(..., for_onnx=True)`: its 1x1 convolutions are then convolutions, which
onnxruntime fuses with the FrozenBatchNorm after them (as a matmul they would be slow Einsum
nodes). The outputs equal the jitted forward's up to float32 rounding: `python -m detr_jax.compare
--runtime onnxruntime` checks them against the reference, tests/test_onnx_runtime.py against JAX.
An export can be kept on disk for later runs (`OnnxFunction(cache_dir=...)`, predict's --onnx-cache),
named by a digest of the program, its parameters and the versions that made it (`export_key`).

Needs the optional extra `onnx` (jax2onnx, onnx, onnxruntime): pip install -e '.[onnx]'.
"""
import collections
import hashlib
import importlib.metadata
import logging
import os
import sys
from typing import Any, Callable

import jax
import numpy as np

from detr_jax.errors import UserError
from detr_jax.files import written_whole


def _require_extra():
  """(jax2onnx.to_onnx, onnxruntime), or one line saying how to install them."""
  from jax._src import core
  if not hasattr(core, "ClosedJaxpr"):  # jax >= 0.12 moved it; jax2onnx 0.17 still reads it there
    import jax.extend.core
    core.ClosedJaxpr = jax.extend.core.ClosedJaxpr
  try:
    import onnxruntime
    from jax2onnx import to_onnx
  except ModuleNotFoundError as e:
    raise UserError(f"--runtime onnxruntime needs the onnx extra (missing: {e.name}): "
                    "pip install -e '.[onnx]'") from None
  return to_onnx, onnxruntime


def export(fn: Callable, *args, path: str | None = None):
  """The ONNX model (onnx.ModelProto) of fn(*args) for args' shapes and dtypes, fn's closed-over
  arrays as initializers; outputs named after fn's output tree (jax's flattening order; a bare
  array: output_0). Also written to `path` if given."""
  to_onnx, _ = _require_extra()
  specs = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in args]
  paths = jax.tree_util.tree_flatten_with_path(jax.eval_shape(fn, *specs))[0]
  names = [jax.tree_util.keystr(p, simple=True, separator="/") or f"output_{i}" for i, (p, _) in enumerate(paths)]
  serde_log = logging.getLogger("onnx_ir.serde")  # "value type ... not known" about shape constants: harmless
  level = serde_log.level
  serde_log.setLevel(logging.ERROR)
  try:
    model = to_onnx(fn, specs, model_name="detr_jax", output_names=names)
  finally:
    serde_log.setLevel(level)
  _fold_paddings_into_max_pools(model.graph)
  if path is not None:
    with open(path, "wb") as f:
      f.write(model.SerializeToString())
  return model


def _fold_paddings_into_max_pools(graph):
  """Rewrites Pad(x, -inf on H and W) -> Transpose(NHWC -> NCHW) -> MaxPool(VALID), jax2onnx's export
  of a padded NHWC max pool (its max_pool plugin drops explicit padding), into Transpose -> MaxPool
  with those pads, in place: the same values, and onnxruntime keeps the MaxPool in its blocked
  layout instead of reordering the stem's output to NCHW and back around the Pad (20-30 ms of a
  DETR-R50 forward). Other graphs are left as they are."""
  from onnx import helper, numpy_helper
  initializers = {i.name: i for i in graph.initializer}
  producer = {out: node for node in graph.node for out in node.output}
  uses = collections.Counter(name for node in graph.node for name in node.input)
  attributes = lambda node: {a.name: helper.get_attribute_value(a) for a in node.attribute}
  for pool in [n for n in graph.node if n.op_type == "MaxPool"]:
    transpose = producer.get(pool.input[0])
    pad = producer.get(transpose.input[0]) if transpose is not None and transpose.op_type == "Transpose" else None
    if (pad is None or pad.op_type != "Pad" or len(pad.input) != 3 or uses[pad.output[0]] != 1
        or uses[transpose.output[0]] != 1 or not all(name in initializers for name in pad.input[1:])):
      continue
    pads = numpy_helper.to_array(initializers[pad.input[1]]).tolist()  # begins of N, H, W, C, then ends
    fill = numpy_helper.to_array(initializers[pad.input[2]])
    pool_attributes = attributes(pool)
    if (attributes(pad).get("mode", b"constant") != b"constant" or fill.size != 1 or fill.item() != -np.inf
        or list(attributes(transpose)["perm"]) != [0, 3, 1, 2] or any(pads[i] for i in (0, 3, 4, 7))
        or pool_attributes.pop("auto_pad", b"NOTSET") not in (b"VALID", b"NOTSET")
        or any(pool_attributes.get("pads", []))):
      continue
    pool_attributes["pads"] = [pads[1], pads[2], pads[5], pads[6]]  # begins of H, W, then ends
    del pool.attribute[:]
    pool.attribute.extend(helper.make_attribute(name, value) for name, value in pool_attributes.items())
    transpose.input[0] = pad.input[0]
    graph.node.remove(pad)


def export_key(fn: Callable, *args) -> str:
  """A digest of everything the export of fn(*args) depends on: the traced program, the values of
  its closed-over arrays (the parameters), the inputs' shapes and dtypes, and the versions of jax,
  jax2onnx, onnx and this module. Equal keys give the same ONNX graph."""
  closed = jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in args])
  digest = hashlib.sha256(str(closed.jaxpr).encode())
  for const in closed.consts:
    array = np.ascontiguousarray(const)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.reshape(-1).view(np.uint8))
  for package in ("jax", "jax2onnx", "onnx"):
    digest.update(importlib.metadata.version(package).encode())
  with open(__file__, "rb") as f:
    digest.update(f.read())
  return digest.hexdigest()[:32]


class OnnxFunction:
  """fn(*arrays) -> a tree of arrays, computed by onnxruntime on the export of fn; each new set of
  input shapes is exported once (tens of seconds for DETR-R50) and its session kept.

  threads: onnxruntime's intra-op threads (0: its default, one per physical core). cache_dir: where
  exports are kept between runs, one file per `export_key` (about 170 MB for DETR-R50); None: export
  in every run. on_export(shapes, cached): called before each new input shape's session is made,
  with the path of the cached export it loads, or None when it exports."""

  def __init__(self, fn: Callable, threads: int = 0, on_export: Callable[[list, str | None], None] | None = None,
               cache_dir: str | None = None):
    _require_extra()
    self.fn, self.threads, self.on_export, self.cache_dir = fn, threads, on_export, cache_dir
    self._sessions: dict[tuple, tuple[Any, Any]] = {}

  def session(self, *args):
    """(onnxruntime.InferenceSession, output treedef) for args' shapes, exported on first use."""
    key = tuple((np.shape(a), np.asarray(a).dtype.str) for a in args)
    if key not in self._sessions:
      _, onnxruntime = _require_extra()
      options = onnxruntime.SessionOptions()
      options.intra_op_num_threads = self.threads
      options.log_severity_level = 3  # errors only (not "removing unused initializer")
      shapes = [np.shape(a) for a in args]
      path = None if self.cache_dir is None else os.path.join(self.cache_dir, export_key(self.fn, *args) + ".onnx")
      session = None
      if path is not None and os.path.isfile(path):
        if self.on_export is not None:
          self.on_export(shapes, path)
        session = self._load(onnxruntime, path, options)
      if session is None:
        if self.on_export is not None:
          self.on_export(shapes, None)
        graph = export(self.fn, *args).SerializeToString()
        session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        if path is not None:
          _save(graph, path)
      treedef = jax.tree_util.tree_structure(jax.eval_shape(self.fn, *args))
      self._sessions[key] = (session, treedef)
    return self._sessions[key]

  @staticmethod
  def _load(onnxruntime, path: str, options):
    """The session of a cached export; None (after a warning) if onnxruntime cannot read it."""
    try:
      return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except (onnxruntime.capi.onnxruntime_pybind11_state.Fail,
            onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf,
            onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph) as e:
      print(f"warning: {path}: unreadable cached ONNX export ({str(e).splitlines()[0][:200]}); exporting again",
            file=sys.stderr, flush=True)
      return None

  def __call__(self, *args):
    session, treedef = self.session(*args)
    feeds = {spec.name: np.asarray(a) for spec, a in zip(session.get_inputs(), args)}
    return jax.tree_util.tree_unflatten(treedef, session.run(None, feeds))


def _save(graph: bytes, path: str):
  """Writes a serialised export to `path` whole or not at all; a cache that cannot be written
  (permissions, a full disk) costs a warning, not the run."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with written_whole(path, "wb") as f:
      f.write(graph)
  except OSError as e:
    print(f"warning: cannot keep the ONNX export in {os.path.dirname(path)}: {e.strerror or e}; it will be "
          "exported again next run", file=sys.stderr, flush=True)
