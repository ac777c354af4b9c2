"""Job entrypoint for `ray job submit ... -- python -m jobs.train --config …` (and `tcm submit train`).

Thin on purpose: it runs `tcm train` with the same arguments, inside the job's driver on the cluster.
"""

import sys

from pipelines.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="python -m jobs.train")
