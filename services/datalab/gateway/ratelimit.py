"""Fixed-window rate limits in Redis, shared by every gateway instance."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as redis

from datalab.core.errors import Problem


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int  # seconds until the window resets (0 when allowed)


class RateLimiter:
    def __init__(self, client: redis.Redis, window_seconds: int = 60):
        self.redis = client
        self.window = window_seconds

    async def hit(self, scope: str, key: str, limit: int) -> Verdict:
        if limit <= 0:  # 0 disables the limit
            return Verdict(True, 0)
        window_start = int(time.time()) // self.window * self.window
        name = f"dl:rl:{scope}:{key}:{window_start}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, self.window + 1)
            count, _ = await pipe.execute()
        if count > limit:
            retry_after = max(1, window_start + self.window - int(time.time()))
            return Verdict(False, retry_after)
        return Verdict(True, 0)

    async def enforce(self, scope: str, key: str, limit: int) -> None:
        """Count one hit; over the limit, a 429 problem saying when to retry."""
        verdict = await self.hit(scope, key, limit)
        if not verdict.allowed:
            raise Problem(429, f"Rate limit exceeded ({scope}); retry later.",
                          headers={"Retry-After": str(verdict.retry_after)})
