"""train.py's configuration and workdir errors: one `error: ...` line each, before jax does any work.

The train.py runs use configs/detr_resnet50.py, which imports no jax (under a second a run); the
other value errors go through the same functions in-process.
"""
import errno
import os
import shutil
import subprocess
import sys

import pytest

from detr_jax.config import check_config, coco_training_config, load_config, split_overrides
from detr_jax.errors import UserError
from detr_jax.training.workdir import check_workdir, disk_full_is_user_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = "configs/detr_resnet50.py"


def _train(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def _error(result) -> str:
  """The one error line of a failed run."""
  assert result.returncode == 1, result.stdout + result.stderr
  assert "Traceback" not in result.stderr and result.stdout == ""
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


def _printed(*args) -> dict:
  result = _train("--print_config", *args)
  assert result.returncode == 0, result.stderr
  return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_unknown_key_of_the_issue(tmp_path):
  line = _error(_train("--config", "configs/synthetic.py", "--workdir", str(tmp_path), "--config.trainsteps=3"))
  assert line == "error: unknown config key trainsteps; did you mean total_steps?"
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("key, closest", [
    ("trainsteps", "total_steps"), ("dataset.nmae", "dataset.name"), ("model.hidden_dimm", "model.hidden_dim"),
    ("loss.eos_coeff", "loss.eos_coef"), ("eos_coef", "loss.eos_coef"), ("modle.hidden_dim", "model.hidden_dim")])
def test_unknown_key_names_the_closest_valid_ones(tmp_path, key, closest):
  line = _error(_train("--config", COCO, "--workdir", str(tmp_path), f"--config.{key}=1"))
  assert line.startswith(f"error: unknown config key {key}; did you mean {closest}")


def test_unknown_key_without_a_close_one_lists_the_section(tmp_path):
  line = _error(_train("--config", COCO, "--workdir", str(tmp_path), "--config.model.zzz=1"))
  assert line.startswith("error: unknown config key model.zzz; section model has attention, aux_loss, backbone, ")


def test_bad_value_type_is_one_line(tmp_path):
  line = _error(_train("--config", COCO, "--workdir", str(tmp_path), "--config.total_steps=abc"))
  assert line == "error: config key total_steps: 'abc' is not an integer (default 924000)"
  line = _error(_train("--config", COCO, "--workdir", str(tmp_path), "--config.loss.matcher_backend=hungarian"))
  assert line == "error: config key loss.matcher_backend is 'hungarian'; expected one of scipy, optax"


@pytest.mark.parametrize("override, message", [
    ("lr=fast", "config key lr: 'fast' is not a number (default 0.0001)"),
    ("progress=maybe", "config key progress: 'maybe' is not true or false (default True)"),
    ("dataset.bucket_sides=(a,)", "config key dataset.bucket_sides: '(a,)' is not a tuple like (640, 800, 1088, 1344)"),
    ("dataset.bucket_sides=(64.5,)", "config key dataset.bucket_sides: '(64.5,)' is not a tuple like (640, 800, "
                                     "1088, 1344)"),
    ("model=1", "config key model is a section; set its fields, e.g. --config.model.attention"),
    ("model.hidden_dim.size=1", "config key model.hidden_dim.size: model.hidden_dim is a value, not a section"),
    ("total_steps=-5", "config key total_steps must be >= 0, got -5"),
    ("global_batch_size=0", "config key global_batch_size must be > 0, got 0"),
    ("model.nheads=0", "config key model.nheads must be > 0, got 0"),
    ("dataset.name=cocoo", "config key dataset.name is 'cocoo'; expected one of synthetic, coco, coco_panoptic, "
                           "coco_custom, tfds"),
    ("model.backbone=resnet152", "config key model.backbone is 'resnet152'; expected one of resnet18, resnet34, "
                                 "resnet50, resnet101"),
])
def test_bad_value(override, message):
  _, overrides = split_overrides([f"--config.{override}"])
  with pytest.raises(UserError) as error:
    load_config(COCO, overrides)
  assert str(error.value) == message


def test_other_flag_mistakes_are_one_line(tmp_path):
  assert "Did you mean: workdir" in _error(_train("--config", COCO, "--wrokdir", str(tmp_path)))
  line = _error(_train("--config", COCO, "--workdir", str(tmp_path), "oops"))
  assert line == "error: unexpected argument 'oops' (see --help)"
  assert _error(_train("--config", COCO)) == "error: --workdir is required (or --print_config)"
  assert _error(_train("--workdir", str(tmp_path))).startswith("error: --config is required")
  assert _error(_train("--config", COCO, "--print_config", "--config.total_steps")) == \
      "error: config key total_steps needs a value: --config.total_steps=VALUE"


def test_config_file_errors(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n  pass\n")
  plain = tmp_path / "plain.py"
  plain.write_text("LR = 1e-4\n")
  line = _error(_train("--config", str(broken), "--workdir", str(tmp_path / "w")))
  assert line.startswith(f"error: config file {broken}, line 1: ")  # then Python's message
  cases = {f"{tmp_path}/nope.py": f"error: config file {tmp_path}/nope.py does not exist",
           str(plain): f"error: config file {plain} defines no get_config()",
           f"{COCO}:big": f"error: config file {COCO} takes no argument, got {COCO}:big",
           "configs/detr_resnet50_panoptic.py:stage3": "error: unknown panoptic stage 'stage3'; expected 'boxes' or "
                                                       "'masks'"}
  for spec, message in cases.items():
    assert _error(_train("--config", spec, "--workdir", str(tmp_path / "w"))) == message
  assert not (tmp_path / "w").exists()


def test_workdir_that_is_a_file_or_under_one(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("")
  line = _error(_train("--config", COCO, "--workdir", str(afile)))
  assert line == f"error: workdir {afile} is a file, not a directory"
  assert _error(_train("--config", COCO, "--workdir", str(afile / "run"))) == \
      f"error: cannot create workdir {afile}/run: Not a directory"


@pytest.fixture
def read_only_dir(tmp_path):
  """A directory nobody can write to: read-only permissions, or the immutable attribute for root."""
  path = tmp_path / "read_only"
  path.mkdir()
  path.chmod(0o555)
  immutable = False
  try:
    (path / "probe").touch()  # root ignores the permission bits
  except PermissionError:
    pass
  else:
    (path / "probe").unlink()
    immutable = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)]).returncode == 0
    if not immutable:
      pytest.skip("cannot make a directory unwritable here (root without chattr)")
  yield path
  if immutable:
    subprocess.run(["chattr", "-i", str(path)], check=True)
  path.chmod(0o755)


def test_unwritable_workdir(read_only_dir):
  line = _error(_train("--config", COCO, "--workdir", str(read_only_dir)))
  assert line.startswith(f"error: cannot write to workdir {read_only_dir}: ")
  line = _error(_train("--config", COCO, "--workdir", str(read_only_dir / "run")))
  assert line.startswith(f"error: cannot create workdir {read_only_dir}/run: ")


def test_eval_needs_an_existing_workdir(tmp_path):
  line = _error(_train("--config", COCO, "--workdir", str(tmp_path / "none"), "--mode", "eval"))
  assert line == f"error: workdir {tmp_path}/none does not exist"
  assert not (tmp_path / "none").exists()


def test_free_space_and_disk_full(tmp_path):
  check_workdir(str(tmp_path / "ok"))  # creates it
  assert (tmp_path / "ok").is_dir()
  with pytest.raises(UserError, match=r"has only \d+ MiB free; a run needs at least 1073741824 MiB"):
    check_workdir(str(tmp_path), min_free_bytes=1 << 50)
  with pytest.raises(UserError, match=f"^no space left on device writing to workdir {tmp_path}: free some space"):
    with disk_full_is_user_error(str(tmp_path)):
      with open("/dev/full", "w") as f:  # a real ENOSPC, raised by the flush at close
        f.write("x")
  with pytest.raises(UserError, match="^no space left on device writing w/metrics.jsonl: free some space"):
    with disk_full_is_user_error("w"):
      raise OSError(errno.ENOSPC, "No space left on device", "w/metrics.jsonl")
  with pytest.raises(PermissionError):  # any other OSError stays what it is
    with disk_full_is_user_error(str(tmp_path)):
      raise PermissionError(errno.EACCES, "Permission denied", "x")


def test_help_says_how_to_see_a_config():
  result = _train("--help")
  assert "--print_config" in result.stdout and "--config.KEY=VALUE" in result.stdout
  assert "--workdir" in result.stdout and "--mode" in result.stdout


def test_print_config_shows_defaults_with_overrides():
  printed = _printed("--config", COCO, "--config.model.dropout=0.0", "--config.dataset.bucket_sides=(640, 800)",
                     "--config.lr", "2e-4", "--noconfig.model.aux_loss", "--config.seed", "-3", "--config.progress")
  default = coco_training_config("detr_resnet50")
  assert printed["model.dropout"] == "0.0" and printed["dataset.bucket_sides"] == "(640, 800)"
  assert printed["lr"] == "0.0002" and printed["model.aux_loss"] == "False" and printed["seed"] == "-3"
  assert printed["progress"] == "True"
  assert printed["model.nheads"] == str(default.model.nheads) == "8"  # untouched defaults
  assert printed["dataset.name"] == "coco" and printed["loss.eos_coef"] == "0.1"
  leaves = {f"{section}.{k}" if section else k for section, cfg in
            [("", default), ("model", default.model), ("dataset", default.dataset), ("loss", default.loss)]
            for k, v in cfg.items() if not hasattr(v, "keys")}
  assert set(printed) == leaves


@pytest.mark.parametrize("batch, steps_per_epoch", [(64, 1848), (32, 3696), (16, 7392)])
def test_coco_steps_per_epoch_follow_the_global_batch(batch, steps_per_epoch):
  printed = _printed("--config", COCO, f"--config.global_batch_size={batch}")
  assert int(printed["total_steps"]) == 500 * steps_per_epoch
  assert int(printed["lr_drop_step"]) == 400 * steps_per_epoch
  assert int(printed["checkpoint_every"]) == steps_per_epoch
  assert int(printed["eval_every"]) == 10 * steps_per_epoch
  stage1 = _printed("--config", "configs/detr_resnet50_panoptic.py:boxes", f"--config.global_batch_size={batch}")
  assert int(stage1["total_steps"]) == 300 * steps_per_epoch and int(stage1["lr_drop_step"]) == 200 * steps_per_epoch


def test_coco_step_override_leaves_the_others():
  printed = _printed("--config", COCO, "--config.checkpoint_every=7", "--config.global_batch_size=32")
  assert (printed["checkpoint_every"], printed["total_steps"], printed["eval_every"]) == ("7", "1848000", "36960")
  config = load_config(COCO, [("total_steps", "100"), ("global_batch_size", "16")])
  assert (config.total_steps, config.lr_drop_step, config.checkpoint_every) == (100, 2956800, 7392)


def test_batch_must_split_over_the_devices():
  config = load_config(COCO, [("global_batch_size", "8"), ("eval_batch_size", "6")])
  check_config(config, device_count=2)
  with pytest.raises(UserError, match=r"^eval batch size 6 must be divisible by the number of devices \(4\)$"):
    check_config(config, device_count=4)
  with pytest.raises(UserError, match=r"^global batch size 8 must be divisible by the number of devices \(3\)$"):
    check_config(config, device_count=3)


@pytest.mark.parametrize("spec, override, message", [
    (COCO, "model.dropout=1.0", "config key model.dropout must be >= 0 and < 1, got 1.0"),
    (COCO, "model.enc_layers=-1", "config key model.enc_layers must be >= 0, got -1"),
    (COCO, "model.nheads=6", "config key model.hidden_dim (256) must be divisible by model.nheads (6)"),
    (COCO, "model.hidden_dim=18", "config key model.hidden_dim (18) must be divisible by model.nheads (8)"),
    ("configs/synthetic.py", "model.hidden_dim=18", "config key model.hidden_dim (18) must be divisible by "
                                                    "model.nheads (8)"),
    ("configs/synthetic.py", "model.dilation=true", "config key model.dilation (DC5) needs a bottleneck backbone "
                                                    "(resnet50, resnet101), not resnet18"),
    (COCO, "model.backbone_layers=2", "config key model.backbone_layers must be 4 (official) or 3 (the transformer "
                                      "reads layer3), got 2"),
    ("configs/detr_resnet50_panoptic.py", "model.backbone_layers=3", "config key model.backbone_layers=3 leaves out "
     "layer4, which model.dilation (DC5) and model.masks (the panoptic head) need: use 4"),
    ("configs/detr_resnet50_panoptic.py", "model.hidden_dim=64",
     "model.masks=True: the mask head's widths (72, 32, 16, 8, 4) (model.hidden_dim + model.nheads, then hidden_dim "
     "/ 2, 4, 8, 16) must be multiples of 8 (its GroupNorm groups)"),
    (COCO, "loss.eos_coef=-0.1", "config key loss.eos_coef must be >= 0, got -0.1"),
    (COCO, "loss.set_cost_giou=-2", "config key loss.set_cost_giou must be >= 0, got -2.0"),
    (COCO, "dataset.val_size=0", "config key dataset.val_size must be > 0, got 0"),
    (COCO, "dataset.scales=(480, 0)", "config key dataset.scales must be > 0, got (480, 0)"),
    (COCO, "dataset.bucket_sides=(-640,)", "config key dataset.bucket_sides must be > 0, got (-640,)"),
    (COCO, "dataset.crop_size=(600, 384)", "config key dataset.crop_size must be (min, max) with min <= max, "
                                           "got (600, 384)"),
    (COCO, "dataset.workers=-2", "config key dataset.workers must be >= 0, or -1 for min(8, CPUs), got -2"),
    (COCO, "picture_threshold=1.5", "config key picture_threshold must be <= 1, got 1.5"),
    ("configs/synthetic.py", "dataset.num_objects=(3, 1)", "config key dataset.num_objects must be (min, max) with "
                                                           "min <= max, got (3, 1)"),
    ("configs/synthetic.py", "dataset.num_objects=(-1, 2)", "config key dataset.num_objects must be >= 0, "
                                                            "got (-1, 2)"),
    ("configs/synthetic.py", "dataset.object_size=(0.5, 2)", "config key dataset.object_size must be <= 1, "
                                                             "got (0.5, 2.0)"),
    ("configs/synthetic.py", "dataset.image_size=(0, 64)", "config key dataset.image_size must be > 0, got (0, 64)"),
])
def test_bad_value_in_every_section(spec, override, message):
  _, overrides = split_overrides([f"--config.{override}"])
  with pytest.raises(UserError) as error:
    load_config(spec, overrides)
  assert str(error.value) == message


# Numeric fields whose every value is legal (or checked by the code that uses them, as named).
UNCHECKED = {"seed", "dataset.seed", "lr_backbone",  # <= 0 freezes the backbone
             "model.num_classes",  # <= 0: from the dataset (coco_custom), see data.resolve_num_classes
             "model.dropout", "model.backbone_layers", "dataset.workers"}  # own rules in check_config


@pytest.mark.parametrize("spec", sorted(f"configs/{name}" for name in os.listdir(os.path.join(ROOT, "configs")) if name.endswith(".py")))
def test_every_numeric_field_is_checked(spec):
  """A field added to a config without a rule in check_config fails here."""
  from detr_jax import config as config_lib
  checked = set(config_lib.POSITIVE + config_lib.NON_NEGATIVE + config_lib.AT_MOST_ONE + config_lib.MIN_MAX)
  config = load_config(os.path.join(ROOT, spec))
  for key in config_lib._field_paths(config):
    value = config_lib._lookup(config, key)
    numbers = value if isinstance(value, tuple) else (value,)
    if all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
      assert key in checked | UNCHECKED, f"{spec}: {key} has no rule in check_config"


COCO_CONFIGS = {"configs/detr_resnet50.py": (500, 400), "configs/detr_resnet50_dc5.py": (500, 400),
                "configs/detr_resnet101.py": (500, 400), "configs/detr_resnet101_dc5.py": (500, 400),
                "configs/detr_resnet50_panoptic.py:boxes": (300, 200), "configs/detr_resnet50_panoptic.py": (25, 15),
                "configs/detr_resnet50_dc5_panoptic.py": (25, 15), "configs/detr_resnet101_panoptic.py:boxes": (300, 200)}


@pytest.mark.parametrize("spec", sorted(COCO_CONFIGS))
@pytest.mark.parametrize("batch", [64, 24])
def test_every_coco_schedule_follows_the_global_batch(spec, batch):
  """Derived numbers follow the fields they depend on: the epoch-based step fields of every COCO
  config follow global_batch_size, set alone or with other fields."""
  epochs, lr_drop_epoch = COCO_CONFIGS[spec]
  steps_per_epoch = 118_287 // batch
  config = load_config(spec, [("lr", "2e-4"), ("global_batch_size", str(batch)), ("log_every", "10")])
  assert (config.total_steps, config.lr_drop_step) == (epochs * steps_per_epoch, lr_drop_epoch * steps_per_epoch)
  assert (config.checkpoint_every, config.eval_every) == (steps_per_epoch, 10 * steps_per_epoch)
