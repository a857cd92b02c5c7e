"""Which Ray address a job joins, and the refusal of one it cannot."""

import pytest

from pipeline.runtime import ray_address


def test_a_cluster_address_is_joined_and_none_means_local(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address() is None
    for address in ("10.0.0.5:6379", "auto", "ray://head:10001"):
        monkeypatch.setenv("RAY_ADDRESS", address)
        assert ray_address() == address


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "https://ray.example.com"])
def test_the_jobs_api_address_is_refused_with_the_ways_out(monkeypatch, address):
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(ValueError) as refused:
        ray_address()
    message = str(refused.value)
    assert address in message and "ray job submit" in message and "unset RAY_ADDRESS" in message
