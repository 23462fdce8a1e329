"""The local server's load-dependent rate limit: a token bucket per API key answering 429 + Retry-After.

The bucket is pure (a fake clock); the HTTP side over loopback, with the worker's own Labelbox client
retrying through it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from labelbox_sandbox import Sandbox
from labelbox_sandbox.__main__ import parse_args
from labelbox_sandbox.ratelimit import MAX_KEYS, TokenBuckets
from tests.conftest import API_KEY
from worker.labelbox import LabelboxClient

USER = {"query": "query getUser { user { id } }", "variables": {}}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_then_the_rate_with_the_wait_until_the_next_token() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_s=4, clock=clock, burst=2)
    assert [buckets.admit("k") for _ in range(3)] == [0.0, 0.0, 0.25]
    clock.t += 0.1
    assert buckets.admit("k") == 0.15, "a refused request took no token"
    clock.t += 0.15
    assert buckets.admit("k") == 0.0
    clock.t += 10
    assert [buckets.admit("k") for _ in range(3)] == [0.0, 0.0, 0.25], "never more than the burst"
    assert (buckets.admitted, buckets.refused) == (5, 3)


def test_each_key_has_its_own_bucket_and_old_keys_are_forgotten() -> None:
    buckets = TokenBuckets(per_s=1, clock=Clock())
    assert buckets.burst == 1
    assert buckets.admit("a") == 0.0
    assert buckets.admit("a") == 1.0
    assert buckets.admit("b") == 0.0
    for i in range(MAX_KEYS):
        buckets.admit(f"other-{i}")
    assert buckets.admit("a") == 0.0, "forgotten, so it starts full"


def test_the_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBuckets(per_s=0, clock=Clock())


def test_command_line_flags() -> None:
    args = parse_args(["--api-key", "k", "--rate-limit-per-s", "20", "--rate-limit-burst", "5"])
    assert (args.rate_limit_per_s, args.rate_limit_burst) == (20.0, 5.0)
    assert parse_args(["--api-key", "k"]).rate_limit_per_s is None
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--api-key", "k", "--rate-limit-per-s", "0"])
    assert exit_info.value.code == 2


async def _post(session: aiohttp.ClientSession, sandbox: Sandbox, key: str = API_KEY) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(sandbox.graphql_url, json=USER, headers=headers) as response:
        return response.status, await response.json(), response.headers.get("Retry-After", "")


async def test_over_the_rate_answers_429_with_retry_after_per_key() -> None:
    async with (
        Sandbox(api_key=API_KEY, rate_limit_per_s=5, rate_limit_burst=2) as sandbox,
        aiohttp.ClientSession() as session,
    ):
        answers = [await _post(session, sandbox) for _ in range(3)]
        assert [status for status, _, _ in answers] == [200, 200, 429]
        _, body, retry_after = answers[2]
        assert body["message"].startswith("You have exceeded the API rate limit")
        assert 0 < float(retry_after) <= 0.2
        wrong = await _post(session, sandbox, key="another-key")
        assert wrong[0] == 401, "another key has its own bucket (and is refused as a key)"
        await asyncio.sleep(float(retry_after) + 0.02)
        assert (await _post(session, sandbox))[0] == 200
        async with session.get(f"{sandbox.base_url}/_sandbox/rate-limit") as response:
            described = await response.json()
        assert described == {"per_s": 5, "burst": 2, "admitted": 4, "refused": 1}
        async with session.put(f"{sandbox.base_url}/_sandbox/rate-limit", json={"per_s": None}) as response:
            assert response.status == 200
        assert [(await _post(session, sandbox))[0] for _ in range(5)] == [200] * 5
    limited = [r for r in sandbox.state.request_log if r.status == 429]
    assert [r.fault for r in limited] == ["rate_limited"]


async def test_the_worker_client_waits_as_told_and_gets_through() -> None:
    retries: list[tuple[str, str, float]] = []
    async with Sandbox(api_key=API_KEY, rate_limit_per_s=10, rate_limit_burst=1) as sandbox:
        client = LabelboxClient(
            sandbox.graphql_url,
            SecretStr(API_KEY),
            retry_max_s=10,
            on_retry=lambda *args: retries.append(args),
        )
        async with client:
            await asyncio.wait_for(asyncio.gather(*(client.check_auth() for _ in range(6))), timeout=20)
    assert retries, "some requests were answered 429"
    assert {cause for _, cause, _ in retries} == {"429"}
    assert sandbox.state.rate_limit is not None
    assert sandbox.state.rate_limit.admitted == 6
