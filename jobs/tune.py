"""Job entrypoint for `ray job submit ... -- python -m jobs.tune --config …` (and `tcm submit tune`).

Thin on purpose: it runs `tcm tune` with the same arguments, inside the job's driver on the cluster.
"""

import sys

from pipelines.cli import app

if __name__ == "__main__":
    app(["tune", *sys.argv[1:]], prog_name="python -m jobs.tune")
