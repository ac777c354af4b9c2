"""Job entrypoint for `ray job submit ... -- python -m jobs.pipeline --config jobs/pipelines/<name>.yaml`
(and `tcm submit pipeline`).

Thin on purpose: it runs the workflow command (`tcm pipeline run`) with the same arguments inside the job's
driver, so the whole workflow is one Ray job.
"""

import sys

import typer

from pipelines.workflow import pipeline_run_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(pipeline_run_command)  # the only command: its options are the job's arguments

if __name__ == "__main__":
    app(sys.argv[1:], prog_name="python -m jobs.pipeline")
