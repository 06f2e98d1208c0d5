"""Token buckets that keep invite-code guessing slow."""

from __future__ import annotations

import time


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RateLimiter:
    """One bucket per client address plus one for everybody, so neither one client
    nor many together can try more than a few codes a minute."""

    def __init__(self, per_client: tuple[float, int] = (0.2, 10),
                 total: tuple[float, int] = (2.0, 60), max_clients: int = 10000) -> None:
        self.per_client = per_client
        self.total = TokenBucket(*total)
        self.clients: dict[str, TokenBucket] = {}
        self.max_clients = max_clients

    def allow(self, client: str) -> bool:
        bucket = self.clients.get(client)
        if bucket is None:
            if len(self.clients) >= self.max_clients:
                self.clients.clear()
            bucket = self.clients[client] = TokenBucket(*self.per_client)
        return bucket.take() and self.total.take()
