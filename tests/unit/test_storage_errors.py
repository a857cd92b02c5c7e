"""Storage that stops answering: bounded retries, one clear line for the user, stale writers recognised."""

import os
import socket
import subprocess
import sys
import time

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from pipeline import storage
from pipeline.data import STALE_WRITER_S, _writer_is_gone
from pipeline.runtime import user_errors


def test_retries_are_bounded_and_follow_the_aws_variables(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    assert storage.s3_client_config()["retries"] == {"mode": "standard", "max_attempts": 12}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert storage.s3_client_config()["retries"] == {"mode": "adaptive", "max_attempts": 3}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="AWS_MAX_ATTEMPTS"):
        storage.s3_client_config()


def _raised_in_a_task() -> Exception:
    """An unreachable store's error as it reaches a job: raised while handling another, then wrapped."""
    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://store:9000/bucket/key")
        except EndpointConnectionError as e:
            raise RuntimeError("task failed") from e
    except RuntimeError as e:
        return e


def test_an_unreachable_store_is_named_in_one_line_through_wrapping(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")
    message = storage.unreachable(_raised_in_a_task())
    assert message is not None and "\n" not in message
    assert "storage stopped answering" in message and "http://store:9000/bucket/key" in message
    assert "tried 4 times" in message and "rerun the same command" in message.lower()
    assert storage.unreachable(ReadTimeoutError(endpoint_url="http://store:9000")) is not None
    assert storage.unreachable(RuntimeError("a bug")) is None
    assert storage.unreachable(FileNotFoundError("s3://bucket/zoo")) is None


def test_a_job_ends_with_one_line_for_storage_and_keeps_the_traceback_of_a_bug(capsys):
    with pytest.raises(SystemExit) as ended, user_errors():
        raise _raised_in_a_task()
    assert ended.value.code == 2
    assert capsys.readouterr().err.startswith("error: storage stopped answering")
    with pytest.raises(KeyError), user_errors():
        raise KeyError("a bug")


def _marker(**changes) -> dict:
    return {
        "owner": "x",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "heartbeat": time.time(),
        **changes,
    }


def test_a_writer_whose_process_is_gone_is_taken_over_at_once():
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    assert _writer_is_gone(_marker(pid=int(ended.stdout)))  # a process of this host that has ended
    assert _writer_is_gone(_marker())  # an earlier prepare of this very process, no longer writing
    assert _writer_is_gone(_marker(pid=os.getppid(), heartbeat=time.time() - STALE_WRITER_S - 1))


def test_a_live_or_distant_writer_is_waited_for():
    assert not _writer_is_gone(_marker(pid=os.getppid()))  # alive on this host
    assert not _writer_is_gone(_marker(host="another-host", pid=999_999_999))  # cannot be asked: heartbeat
