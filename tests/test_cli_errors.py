"""The smaller command-line tools off the happy path: data.inspect, data.fake_coco, the benchmarks and
tools/dump_torch_reference.py. Expected mistakes are one `error: ...` line (exit 1) or argparse's usage
error (exit 2), never a traceback; nothing the user had is overwritten.

Most runs call main() in-process; a subprocess only where the `python -m` entry itself is the point.
"""
import errno
import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from detr_jax.data import fake_coco, inspect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.py")
CUSTOM = os.path.join(ROOT, "configs", "coco_custom.py")
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _run(main, argv, capsys):
  """(exit code, stdout, stderr) of main(argv); argparse's exits give their code."""
  try:
    code = main([str(a) for a in argv])
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  assert "Traceback" not in err
  return code, out, err


def _error(main, argv, capsys) -> str:
  """The one `error: ...` line of a run that fails with exit code 1 and prints nothing else."""
  code, out, err = _run(main, argv, capsys)
  assert (code, out) == (1, ""), err
  assert err.endswith("\n") and err.startswith("error: ") and err.count("\n") == 1, err
  return err[:-1]


def _usage_error(main, argv, capsys) -> str:
  """argparse's usage error (exit code 2): its last line, `PROG: error: ...`."""
  code, out, err = _run(main, argv, capsys)
  assert (code, out) == (2, ""), err
  assert err.startswith("usage: ")
  return err.splitlines()[-1]


# ---- python -m detr_jax.data.inspect ----

def test_inspect_unknown_config_key_is_one_line(tmp_path):
  """The issue's case: `--config.X` of an unknown key was a ~50-line ml_collections traceback."""
  result = subprocess.run([sys.executable, "-m", "detr_jax.data.inspect", "--config", SYNTHETIC, "--out",
                           str(tmp_path / "out"), "--config.dataset.nmae=coco"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
  assert (result.returncode, result.stdout) == (1, "")
  assert result.stderr == "error: unknown config key dataset.nmae; did you mean dataset.name?\n"
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, message", [
    (["--config.model.hidden_dimm=8"], "unknown config key model.hidden_dimm; did you mean model.hidden_dim?"),
    (["--config.dataset.val_size=big"], "config key dataset.val_size: 'big' is not an integer (default 800)"),
    (["--config.dataset.name=cocoo"], "config key dataset.name is 'cocoo'; expected one of synthetic, coco, "
                                      "coco_panoptic, coco_custom, tfds"),
    (["--noconfig.dataset.augment=1"], "--noconfig.dataset.augment takes no value; use --config.dataset.augment=1"),
    (["--config.dataset.num_val=0"], "synthetic val: no images (dataset.num_val = 0)"),
])
def test_inspect_config_errors(tmp_path, capsys, overrides, message):
  out = tmp_path / "out"
  assert _error(inspect.main, ["--config", SYNTHETIC, "--out", out, *overrides], capsys) == f"error: {message}"
  assert not out.exists()


def test_inspect_missing_config_file(tmp_path, capsys):
  missing = tmp_path / "config.py"
  line = _error(inspect.main, ["--config", missing, "--out", tmp_path / "out"], capsys)
  assert line == f"error: config file {missing} does not exist"


@pytest.mark.parametrize("argv, message", [
    (["--split", "test"], "argument --split: invalid choice: 'test' (choose from 'train', 'val')"),
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--limt", "3"], "unrecognized arguments: --limt 3"),
])
def test_inspect_usage_errors(tmp_path, capsys, argv, message):
  line = _usage_error(inspect.main, ["--config", SYNTHETIC, "--out", tmp_path / "out", *argv], capsys)
  assert line == f"python -m detr_jax.data.inspect: error: {message}"


def test_inspect_required_arguments(capsys):
  line = _usage_error(inspect.main, ["--config", SYNTHETIC], capsys)
  assert line == "python -m detr_jax.data.inspect: error: the following arguments are required: --out"


def test_inspect_out_that_cannot_be_a_folder(tmp_path, capsys):
  a_file = tmp_path / "notes.txt"
  a_file.write_text("mine")
  assert _error(inspect.main, ["--config", SYNTHETIC, "--out", a_file], capsys) == \
      f"error: --out {a_file} is a file, not a folder"
  assert _error(inspect.main, ["--config", SYNTHETIC, "--out", a_file / "out"], capsys) == \
      f"error: --out {a_file / 'out'}: cannot create it (Not a directory)"
  assert a_file.read_text() == "mine"


def test_inspect_disk_full_names_the_file(tmp_path, capsys, monkeypatch):
  def no_space(path, **arrays):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(np, "savez_compressed", no_space)
  out = tmp_path / "out"
  line = _error(inspect.main, ["--config", SYNTHETIC, "--out", out, "--limit", "1"], capsys)
  assert line == f"error: cannot write {out / 'examples.npz'}: No space left on device"
  assert [p.name for p in out.iterdir()] == ["00000_0.png"]


def test_inspect_missing_dataset(tmp_path, capsys):
  line = _error(inspect.main, ["--config", CUSTOM, "--out", tmp_path / "out",
                               f"--config.dataset.val_images={tmp_path}/x",
                               f"--config.dataset.val_json={tmp_path}/x.json"], capsys)
  assert line == f"error: {tmp_path}/x (dataset.val_images) does not exist"
  line = _error(inspect.main, ["--config", CUSTOM, "--out", tmp_path / "out", "--split", "train"], capsys)
  assert line == "error: dataset.train_images is not set"
  assert not (tmp_path / "out").exists()


def test_inspect_validates_the_dataset_first(tmp_path, capsys):
  """A truncated and a missing image: both listed (validate()), before anything is written."""
  root = tmp_path / "coco"
  fake_coco.write_split(str(root), "val", 3, image_size=(24, 32))
  truncated, missing = root / "val2017" / "000000001000.jpg", root / "val2017" / "000000001014.jpg"
  truncated.write_bytes(truncated.read_bytes()[:100])
  missing.unlink()
  code, out, err = _run(inspect.main, ["--config", CUSTOM, "--out", tmp_path / "out",
                                       f"--config.dataset.val_images={root}/val2017",
                                       f"--config.dataset.val_json={root}/annotations/instances_val2017.json"], capsys)
  assert (code, out) == (1, "")
  lines = err.splitlines()
  assert lines[0] == "error: 2 problems in dataset coco_custom val:" and len(lines) == 3
  assert lines[1].startswith(f"  {truncated}: cannot read image (") and lines[2] == f"  {missing}: image not found"
  assert not (tmp_path / "out").exists()


# ---- python -m detr_jax.data.fake_coco ----

def test_fake_coco_refuses_a_folder_with_files(tmp_path, capsys):
  root = tmp_path / "data"
  root.mkdir()
  (root / "mine.txt").write_text("keep me")
  line = _error(fake_coco.main, [root, "--train", "1", "--val", "1", "--size", "16", "16"], capsys)
  assert line == f"error: {root} is not empty; give a new or empty folder (nothing is overwritten)"
  assert [p.name for p in root.iterdir()] == ["mine.txt"] and (root / "mine.txt").read_text() == "keep me"
  a_file = tmp_path / "file"
  a_file.write_text("keep me")
  line = _error(fake_coco.main, [a_file, "--train", "1", "--val", "1"], capsys)
  assert line == f"error: {a_file} is a file; give a new or empty folder (nothing is overwritten)"
  line = _error(fake_coco.main, [a_file / "data", "--train", "1", "--val", "1"], capsys)
  assert line == f"error: cannot write {a_file / 'data'}: {a_file} is a file"
  assert a_file.read_text() == "keep me"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file"]  # no temporary folder left


def test_fake_coco_fills_an_empty_folder(tmp_path, capsys):
  root = tmp_path / "data"
  root.mkdir()
  code, out, _ = _run(fake_coco.main, [root, "--train", "2", "--val", "1", "--size", "16", "20"], capsys)
  assert (code, out) == (0, f"wrote 2 + 1 images to {root}\n")
  assert sorted(p.name for p in root.iterdir()) == ["annotations", "panoptic", "train2017", "val2017"]
  assert (len(list((root / "train2017").iterdir())), len(list((root / "val2017").iterdir()))) == (2, 1)
  assert [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize("argv, message", [
    (["--train", "-1"], "--train and --val must be >= 0, got -1 and 16"),
    (["--size", "0", "0"], "--size: each side must be in 16..4096, got 0 0"),
    (["--size", "5", "5"], "--size: each side must be in 16..4096, got 5 5"),  # was: could not place an object
    (["--size", "16", "5000"], "--size: each side must be in 16..4096, got 16 5000"),
    (["--size", "16"], "argument --size: expected 2 arguments"),
])
def test_fake_coco_bad_arguments(tmp_path, capsys, argv, message):
  line = _usage_error(fake_coco.main, [tmp_path / "data", *argv], capsys)
  assert line == f"python -m detr_jax.data.fake_coco: error: {message}"
  assert not (tmp_path / "data").exists()


def test_fake_coco_write_failure_leaves_nothing(tmp_path, capsys, monkeypatch):
  """The disk fills up while writing val: no half-written folder, no temporary folder."""
  write_split = fake_coco.write_split

  def fill_up(root, split, *args):
    if split == "val":
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(root, "val2017"))
    write_split(root, split, *args)
  monkeypatch.setattr(fake_coco, "write_split", fill_up)
  line = _error(fake_coco.main, [tmp_path / "data", "--train", "1", "--size", "16", "16"], capsys)
  assert line.startswith(f"error: cannot write {tmp_path / 'data'}: No space left on device (")
  assert list(tmp_path.iterdir()) == []


def test_fake_coco_ctrl_c_leaves_nothing(tmp_path):
  """Ctrl-C while images are being written: exit 130, one line, and the temporary folder is removed."""
  root = tmp_path / "data"
  # Ctrl-C as from a terminal: pytest-xdist's workers ignore SIGINT and children inherit that, so the
  # child first restores Python's handler (KeyboardInterrupt).
  run = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "sys.argv[0] = 'fake_coco'; runpy.run_module('detr_jax.data.fake_coco', run_name='__main__')")
  process = subprocess.Popen([sys.executable, "-c", run, str(root), "--train", "100000", "--size", "64", "64"],
                             cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".data.*.tmp/train2017/*.jpg")) and time.monotonic() < deadline:
      time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
  finally:
    process.kill()  # never left writing images after a failure
  assert (process.returncode, out, err) == (130, "", "interrupted\n")
  assert list(tmp_path.iterdir()) == []


def test_train_ctrl_c_during_setup_is_one_line(tmp_path):
  """Ctrl-C before the first train step (jax start-up, compilation): exit 130 and one line, no traceback."""
  workdir = tmp_path / "run"
  run = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "sys.argv[0] = 'train.py'; runpy.run_path('train.py', run_name='__main__')")
  process = subprocess.Popen([sys.executable, "-c", run, "--config", "configs/synthetic.py", "--workdir", str(workdir)],
                             cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while not workdir.exists() and time.monotonic() < deadline:  # made first, seconds before training starts
      time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
  finally:
    process.kill()
  assert process.returncode == 130, err
  assert err.splitlines()[-1] == ("interrupted: the checkpoints already in the workdir are kept; the same command "
                                  "resumes from the latest") and "Traceback" not in err


# ---- benchmarks/*.py: wrong arguments are argparse usage errors, before any work ----

def _script(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("script, argv, message", [
    ("forward.py", ["--reps", "0"], "--size, --batch and --reps must be positive, got 800 1066, 1, 0"),  # was:
    # StatisticsError after compiling
    ("forward.py", ["--size", "0", "10"], "--size, --batch and --reps must be positive, got 0 10, 1, 5"),
    ("forward.py", ["--model", "detr"], "argument --model: invalid choice: 'detr' (choose from 'detr_resnet50', "
                                        "'detr_resnet50_dc5', 'detr_resnet101', 'detr_resnet101_dc5', "
                                        "'detr_resnet50_panoptic', 'detr_resnet50_dc5_panoptic', "
                                        "'detr_resnet101_panoptic')"),
    ("train_step.py", ["--batch", "0"], "--size, --batch and --reps must be positive and --objects >= 0, got 800 "
                                        "1088, 0, 10, 7"),
    ("train_step.py", ["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    ("train_step.py", ["--model", "synthetic"], "--objects 7: more than --model synthetic's 4 queries"),  # was:
    # ValueError from the matcher callback after compiling
    ("profile_step.py", ["--model", "synthetic"], "--objects 8: more than --model synthetic's 4 queries"),
    ("profile_step.py", ["--reps", "0"], "--size, --batch and --reps must be positive and --objects >= 0, got 512 "
                                         "683, 2, 0, 8"),
    ("profile_step.py", ["--model", "detr_resnet50_panoptic"], "--model detr_resnet50_panoptic: the profile covers "
                                                               "box models (no mask head)"),
    ("panoptic_inference.py", ["--kept", "100"], "--mask-queries must be in 0..100 and --kept in 1..99, got 0 25 "
                                                 "and 100"),  # was: IndexError
    ("panoptic_inference.py", ["--mask-queries", "-3"], "--mask-queries must be in 0..100 and --kept in 1..99, got "
                                                        "-3 and 15"),
    ("input_pipeline.py", ["--runs", "2"], "--runs: 2 is not WORKERS:THREADS (workers a count or default, threads "
                                           ">= 1)"),  # was: ValueError after writing the images
    ("input_pipeline.py", ["--batches", "0"], "--images, --batch and --batches must be positive, --warmup and "
                                              "--step-seconds >= 0, got 64, 8, 0, 3, 0.0"),  # was: ZeroDivisionError
    ("input_pipeline.py", ["--size", "8", "8"], "--size: each side must be in 16..4096, got 8 8"),
])
def test_benchmark_bad_arguments(capsys, script, argv, message):
  line = _usage_error(_script(f"benchmarks/{script}").main, argv, capsys)
  assert line.split(": error: ", 1)[1] == message  # the program name is the running script's


def test_input_pipeline_missing_coco(tmp_path, capsys):
  (tmp_path / "train2017").mkdir()
  main = _script("benchmarks/input_pipeline.py").main
  assert _error(main, ["--coco-path", tmp_path], capsys) == \
      f"error: {tmp_path}/annotations/instances_train2017.json: annotation file not found"


# ---- tools/dump_torch_reference.py ----

def _dump_error(argv, capsys) -> str:
  with pytest.raises(SystemExit) as exit_info:
    _script("tools/dump_torch_reference.py").main([str(a) for a in argv])
  assert capsys.readouterr() == ("", "")
  return exit_info.value.code  # sys.exit(message): printed to stderr, exit code 1


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_dump_torch_reference_without_torch(tmp_path, capsys):
  (tmp_path / "models").mkdir()
  (tmp_path / "models" / "detr.py").write_text("")
  message = _dump_error(["--detr-repo", tmp_path, "--model", "detr_resnet50", "--fill-seed", "1", "--inputs",
                         os.path.join(ROOT, "tests/fixtures/inputs.npz"), "--out-reference", tmp_path / "ref.npz"],
                        capsys)
  assert message == ("dump_torch_reference: error: needs PyTorch, which is not installed here: pip install torch "
                     "torchvision (see the module doc)")


def test_dump_torch_reference_bad_inputs(tmp_path, capsys):
  """--inputs is read before torch is imported: checked with or without torch."""
  single, garbage = tmp_path / "single.npy", tmp_path / "garbage.npz"
  np.save(single, np.zeros(3))
  garbage.write_bytes(b"PK\x03\x04 not really a zip")
  expected = {tmp_path / "missing.npz": "cannot read --inputs '{}': No such file or directory",
              single: "--inputs '{}' is a single .npy array, not an .npz archive (np.savez)",
              garbage: "--inputs '{}' is not a readable .npz archive (File is not a zip file)"}
  for path, message in expected.items():
    assert _dump_error(["--detr-repo", tmp_path, "--model", "detr_resnet50", "--fill-seed", "1", "--inputs", path,
                        "--out-reference", tmp_path / "ref.npz"], capsys) == \
        "dump_torch_reference: error: " + message.format(path)


def test_predict_negative_mask_queries(capsys):
  from detr_jax import predict
  line = _usage_error(predict.main, ["--checkpoint", "none", "x.png", "--mask-queries", "-1"], capsys)
  assert line == "python -m detr_jax.predict: error: --mask-queries must be >= 0, got -1"
