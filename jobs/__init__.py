"""Ray job entrypoints (`python -m jobs.<stage> …`, what `tcm submit` and the k8s manifests run).

The model stack (torch, torchvision through open_clip) is imported here, before an entrypoint connects to Ray.
The `tcm` CLI imports it only where a command needs it (so `tcm --help` answers at once), which in a job
driver would be after `ray.init()`, and two things break there (Ray 2.60, torch 2.14; both reproduced on the
local stack with a few-line job):
- loading libtorch after `ray.init()` aborts the driver ("Intel oneMKL FATAL ERROR: Cannot load
  …/torch/lib/libtorch_cpu.so");
- `ray.init()` unpacks the job's working_dir package again, shortly after it returns: the folder the driver runs
  in is deleted and re-created at the same path, so `os.getcwd()` fails from then on, and torch's first import
  of torch._dynamo (through torchvision) asks for it. Imported now, it has what it needs.
"""

import open_clip  # noqa: F401  (imports torch and torchvision; see above)
import torch  # noqa: F401
