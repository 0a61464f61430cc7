"""Two processes on loopback: `sync_processes` waits for the late one (at a coordination-service
barrier, not a gloo collective that would time out), and `SyncAfterCompile` compiles once per
input shape and runs steps whose collectives span both processes."""
import os
import subprocess
import sys

from helpers import ROOT, free_port, outputs_of
SCRIPT = """
import sys, time
import jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from detr_jax.training.processes import SyncAfterCompile, sync_processes
compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: compiles.append(event) if event.endswith("backend_compile_duration") else None)
me = jax.process_index()
time.sleep(3 * me)
start = time.time()
sync_processes("test")
print("waited", time.time() - start)
total = SyncAfterCompile(jax.pmap(lambda x: jax.lax.psum(x, "d"), axis_name="d"), "sum")
compiles.clear()
for shape in [(1, 2), (1, 2), (1, 3)]:
  print("sum", total(np.full(shape, me + 1.0, np.float32)).addressable_shards[0].data.tolist())
print("compilations", len(compiles))
"""


def test_barrier_waits_for_the_late_process_and_steps_sum_over_both():
  address = f"localhost:{free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, address, str(i)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outputs = outputs_of(procs, timeout=120)
  lines = [dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ")[0] in
                ("waited", "compilations")) for out in outputs]
  assert float(lines[0]["waited"]) > 2.5 > float(lines[1]["waited"])  # process 0 waited for process 1
  for out in outputs:
    sums = [line for line in out.splitlines() if line.startswith("sum")]
    assert sums == ["sum [[3.0, 3.0]]", "sum [[3.0, 3.0]]", "sum [[3.0, 3.0, 3.0]]"], out
  assert [line["compilations"] for line in lines] == ["2", "2"]  # one per shape: the call reuses it
