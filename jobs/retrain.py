"""Job entrypoint for the retrain schedule (`RayCronJob` in infra/k8s, or `tcm submit retrain`).

Runs `tcm retrain --config …` inside the job's driver: ingest what is new in the bucket, fine-tune from the
`champion` model, evaluate on the fixed benchmark, promote only if better by the configured margin.
"""

import sys

from pipelines.cli import app

if __name__ == "__main__":
    app(["retrain", *sys.argv[1:]], prog_name="python -m jobs.retrain")
