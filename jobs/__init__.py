"""Ray job entrypoints (`python -m jobs.<stage> …`, what `tcm submit` and the k8s manifests run).

torch is imported here, before any entrypoint connects to Ray: in a Ray job's driver, loading libtorch after
`ray.init()` aborts the process ("Intel oneMKL FATAL ERROR: Cannot load …/torch/lib/libtorch_cpu.so"; Ray 2.60 with
torch 2.14, reproduced on the local stack with a two-line job). The `tcm` CLI imports torch only where a command
needs it (so `tcm --help` answers at once), which would otherwise be after the driver connected.
"""

import torch  # noqa: F401  (see above: must precede ray.init in a job driver)
