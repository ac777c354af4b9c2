"""Job entrypoint for `ray job submit ... -- python -m jobs.cross_eval --config <cross-eval YAML>`
(and `tcm submit cross_eval`).

Thin on purpose: it runs the cross-evaluation command with the same arguments inside the job's driver.
"""

import sys

import typer

from pipelines.cross_eval import cross_eval_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(cross_eval_command)  # the only command: its options are the job's arguments

if __name__ == "__main__":
    app(sys.argv[1:], prog_name="python -m jobs.cross_eval")
