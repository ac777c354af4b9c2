"""`tcm submit`: what goes into the job's runtime env, and the job's status as exit code (no cluster needed)."""

from __future__ import annotations

import pytest

from pipelines import submit as submit_mod


class FakeClient:
    """Stands in for ray.job_submission.JobSubmissionClient: records the submission, ends in `status`."""

    submitted: dict = {}
    status = "SUCCEEDED"

    def __init__(self, address: str):
        self.address = address

    def submit_job(self, **kwargs):
        FakeClient.submitted = kwargs
        return "raysubmit_1"

    async def tail_job_logs(self, job_id):
        yield "epoch 1 done\n"

    def get_job_status(self, job_id):
        return f"JobStatus.{FakeClient.status}"


@pytest.fixture
def fake_client(monkeypatch):
    import ray.job_submission

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    return FakeClient


def test_runtime_env_carries_endpoints_but_never_credentials(fake_client, monkeypatch, tmp_path):
    (tmp_path / "c.yaml").write_text("name: x\n")
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAFAKESUBMIT0000001", "AWS_SECRET_ACCESS_KEY": "fake/secret/submit",
               "AWS_SESSION_TOKEN": "fake-session-token-submit"}  # fmt: skip
    for k, v in {**secrets, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5"}.items():
        monkeypatch.setenv(k, v)
    lines: list[str] = []
    code = submit_mod.submit("http://127.0.0.1:8265", "train", "c.yaml", working_dir=str(tmp_path), echo=lines.append)
    assert code == 0
    env = fake_client.submitted["runtime_env"]["env_vars"]
    assert env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9" and env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5"
    leaked = [k for k, v in secrets.items() if k in env or v in repr(fake_client.submitted)]
    assert not leaked, f"credentials forwarded in the job's runtime_env: {leaked}"
    assert fake_client.submitted["entrypoint"] == "python -m jobs.train --config c.yaml"
    assert "epoch 1 done" in lines


@pytest.mark.parametrize(("status", "code"), [("FAILED", 1), ("STOPPED", 2)])
def test_exit_code_is_the_jobs_outcome(fake_client, tmp_path, status, code, monkeypatch):
    (tmp_path / "c.yaml").write_text("name: x\n")
    monkeypatch.setattr(FakeClient, "status", status)
    assert submit_mod.submit("http://h:8265", "tune", "c.yaml", working_dir=str(tmp_path), echo=lambda _: None) == code


def test_missing_config_and_unknown_job_fail_before_submitting(fake_client, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        submit_mod.submit("http://h:8265", "train", "nope.yaml", working_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown job 'trian'"):
        submit_mod.entrypoint("trian", "c.yaml")
