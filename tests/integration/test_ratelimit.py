"""The rate limiter against the real Redis the platform runs."""

import pytest
import redis.asyncio as redis

from datalab.gateway.ratelimit import RateLimiter

pytestmark = pytest.mark.integration


async def test_allows_up_to_the_limit_then_refuses(platform):
    # As the gateway's own ACL user: the limiter's commands and keys are within its rights.
    client = redis.Redis(port=platform.config.redis_port, username="gateway",
                         password=platform.redis.passwords["gateway"])
    limiter = RateLimiter(client, window_seconds=60)
    verdicts = [await limiter.hit("test", "k1", 3) for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert 1 <= verdicts[-1].retry_after <= 60
    assert (await limiter.hit("test", "k2", 3)).allowed  # keys are independent
    assert (await limiter.hit("test", "k1", 0)).allowed  # 0 disables
    await client.aclose()
