"""Job entrypoint for `ray job submit ... -- python -m jobs.evaluate --config …` (and `tcm submit evaluate`).

Thin on purpose: it runs `tcm evaluate` with the same arguments, inside the job's driver on the cluster.
"""

import sys

from pipelines.cli import app

if __name__ == "__main__":
    app(["evaluate", *sys.argv[1:]], prog_name="python -m jobs.evaluate")
