"""The inference forward as an ONNX graph run by onnxruntime (`--runtime onnxruntime`).

jax2onnx traces the very JAX function that `jax.jit` would compile, parameters included as
constants, for one set of input shapes; onnxruntime's CPU provider runs the graph. Build the model
with `build_model(..., for_onnx=True)`: its 1x1 convolutions are then convolutions, which
onnxruntime fuses with the FrozenBatchNorm after them (as a matmul they would be slow Einsum
nodes). The outputs equal the jitted forward's up to float32 rounding: `python -m detr_jax.compare
--runtime onnxruntime` checks them against the reference, tests/test_onnx_runtime.py against JAX.

Needs the optional extra `onnx` (jax2onnx, onnx, onnxruntime): pip install -e '.[onnx]'.
"""
import collections
import logging
from typing import Any, Callable

import jax
import numpy as np

from detr_jax.errors import UserError


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
        or pool_attributes.pop("auto_pad", b"NOTSET") not in (b"VALID", b"NOTSET") or any(pool_attributes.get("pads", []))):
      continue
    pool_attributes["pads"] = [pads[1], pads[2], pads[5], pads[6]]  # begins of H, W, then ends
    del pool.attribute[:]
    pool.attribute.extend(helper.make_attribute(name, value) for name, value in pool_attributes.items())
    transpose.input[0] = pad.input[0]
    graph.node.remove(pad)


class OnnxFunction:
  """fn(*arrays) -> a tree of arrays, computed by onnxruntime on the export of fn; each new set of
  input shapes is exported once (tens of seconds for DETR-R50) and its session kept.

  threads: onnxruntime's intra-op threads (0: its default, one per physical core). on_export: called
  with the input shapes before each export."""

  def __init__(self, fn: Callable, threads: int = 0, on_export: Callable[[list], None] | None = None):
    _require_extra()
    self.fn, self.threads, self.on_export = fn, threads, on_export
    self._sessions: dict[tuple, tuple[Any, Any]] = {}

  def session(self, *args):
    """(onnxruntime.InferenceSession, output treedef) for args' shapes, exported on first use."""
    key = tuple((np.shape(a), np.asarray(a).dtype.str) for a in args)
    if key not in self._sessions:
      _, onnxruntime = _require_extra()
      options = onnxruntime.SessionOptions()
      options.intra_op_num_threads = self.threads
      options.log_severity_level = 3  # errors only (not "removing unused initializer")
      if self.on_export is not None:
        self.on_export([np.shape(a) for a in args])
      model = export(self.fn, *args)
      session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
      treedef = jax.tree_util.tree_structure(jax.eval_shape(self.fn, *args))
      self._sessions[key] = (session, treedef)
    return self._sessions[key]

  def __call__(self, *args):
    session, treedef = self.session(*args)
    feeds = {spec.name: np.asarray(a) for spec, a in zip(session.get_inputs(), args)}
    return jax.tree_util.tree_unflatten(treedef, session.run(None, feeds))
