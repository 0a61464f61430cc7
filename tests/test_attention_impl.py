"""model.attention: jax.nn.dot_product_attention ("xla", "cudnn") against the official outputs, and
its limits (no attention dropout; cuDNN: bfloat16 on an NVIDIA GPU)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import filled_state_dict, load_npz, small_config
from detr_jax.config import check_config, model_config
from detr_jax.errors import UserError
from detr_jax.models import attention
from detr_jax.models.transformer import Transformer, TransformerConfig
from detr_jax.torch_io.convert import convert_official

ATOL = RTOL = 1e-4  # as the parity tests


def test_xla_attention_matches_the_official_transformer():
  """The transformer of the public detection reference, run on the official input_proj and pos
  (float32 on CPU: XLA's implementation): memory and every decoder layer within 1e-4. Measured:
  max abs error 1.5e-6 (memory) and 1.3e-6 (hs), as the reference implementation."""
  ref = load_npz("detection_small.npz")
  cfg = small_config("detection")
  params, _ = convert_official(filled_state_dict("detection"), cfg)
  nhwc = lambda x: x.transpose(0, 2, 3, 1)
  transformer = Transformer(TransformerConfig(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers,
                                              cfg.dim_feedforward, 0.0, attention="xla"))
  with jax.default_matmul_precision("highest"):
    hs, memory = jax.jit(transformer.apply)({"params": params["transformer"]}, nhwc(ref["input_proj"]),
                                            ref["backbone_mask0"], params["query_embed"]["embedding"],
                                            nhwc(ref["pos"]))
  for name, ours, expected in (("hs", hs, ref["hs"]), ("memory", memory, nhwc(ref["memory"]))):
    err, scale = np.abs(np.asarray(ours) - expected).max(), np.abs(expected).max()
    assert err <= ATOL + RTOL * scale, f"{name}: max abs err {err:.3g} (scale {scale:.3g})"


def _mha(implementation, dropout=0.0):
  return attention.MultiheadAttention(num_heads=2, dropout=dropout, implementation=implementation)


def _apply(module, params, *args, **kwargs):
  """module.apply under jit (one compilation instead of one per operation)."""
  return jax.jit(lambda p, *a: module.apply(p, *a, **kwargs))(params, *args)


def _qkv_mask(rng, queries, keys, batch=2, d=16):
  q = rng.normal(size=(batch, queries, d)).astype(np.float32)
  kv = rng.normal(size=(batch, keys, d)).astype(np.float32)
  mask = np.zeros((batch, keys), bool)
  mask[0, keys // 2:] = True  # image 0: half of its cells are padding
  return q, kv, mask


def test_cudnn_path_is_exact_for_odd_lengths_and_the_key_padding_mask(monkeypatch):
  """The cuDNN path pads odd query/key lengths with masked cells and broadcasts the mask over the
  queries; run through XLA's kernel here (no GPU), it gives the reference attention."""
  rng = np.random.default_rng(0)
  q, kv, mask = _qkv_mask(rng, queries=5, keys=7)
  params = jax.jit(_mha("reference").init)(jax.random.PRNGKey(0), q, kv, kv, mask)
  expected = _apply(_mha("reference"), params, q, kv, kv, mask)
  seen, xla_attention = [], jax.nn.dot_product_attention

  def through_xla(q, k, v, mask=None, scale=None, implementation=None):
    seen.append((q.shape[1], k.shape[1], mask.shape, implementation))
    return xla_attention(q, k, v, mask=mask, scale=scale, implementation="xla")

  monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(attention.jax.nn, "dot_product_attention", through_xla)
  got = _apply(_mha("cudnn"), params, q, kv, kv, mask)
  assert seen == [(6, 8, (2, 1, 6, 8), "cudnn")]
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_fused_attention_refuses_attention_dropout():
  """The official model drops attention weights; dot_product_attention cannot: training with
  dropout > 0 is an error (inference with the same module is fine), and so is such a config."""
  rng = np.random.default_rng(1)
  q, kv, mask = _qkv_mask(rng, queries=4, keys=6)
  module = _mha("xla", dropout=0.1)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), q, kv, kv, mask)
  np.testing.assert_allclose(_apply(module, params, q, kv, kv, mask),
                             _apply(_mha("reference", dropout=0.1), params, q, kv, kv, mask), atol=1e-6)
  with pytest.raises(UserError, match="has no dropout on the attention weights"):
    _apply(module, params, q, kv, kv, mask, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  with pytest.raises(UserError, match=r"^config key model.attention='xla' has no dropout on the attention weights"):
    check_config(ml_collections.ConfigDict({"model": model_config(attention="xla")}))
  check_config(ml_collections.ConfigDict({"model": model_config(attention="xla", dropout=0.0)}))


def test_cudnn_needs_bfloat16_and_a_gpu():
  with pytest.raises(UserError, match=r"^config key model.attention='cudnn' \(cuDNN flash attention\) needs "
                                      r"model.dtype='bfloat16'$"):
    check_config(ml_collections.ConfigDict({"model": model_config(attention="cudnn", dropout=0.0)}))
  if jax.default_backend() == "gpu":
    pytest.skip("the CPU error is for machines without a GPU")
  q, kv, mask = _qkv_mask(np.random.default_rng(2), queries=4, keys=6)
  module = attention.MultiheadAttention(num_heads=2, dtype=jnp.bfloat16, implementation="cudnn")
  with pytest.raises(UserError, match="^model.attention='cudnn' needs an NVIDIA GPU; this backend is cpu"):
    module.init(jax.random.PRNGKey(0), q, kv, kv, mask)
