"""POST a message, retrying with backoff; say plainly why it did not arrive.

A receiver that is down, slow or failing costs retries in the background and a
recorded failure, never a delay of the held statement: the caller (the notifier)
runs every delivery in its own task. Errors are phrased from what we observed
(status code, timeout, refused connection), never from the receiver's response
body, which could echo anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

log = logging.getLogger("dbgate.notify")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    timeout: float = 5.0  # per attempt
    max_attempts: int = 5
    backoff: float = 1.0  # before the second attempt; doubled each time
    max_backoff: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.backoff * (2 ** (attempt - 1)), self.max_backoff)

    def longest_delivery(self) -> float:
        """Upper bound of one delivery's duration (for reclaiming abandoned ones)."""
        waits = sum(self.delay(a) for a in range(1, self.max_attempts))
        return self.timeout * self.max_attempts + waits


@dataclass(frozen=True, slots=True)
class AttemptResult:
    ok: bool
    error: str = ""
    retry: bool = True  # worth trying again


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


class Sender:
    """One HTTP client for all notifications; call :meth:`start` before sending."""

    def __init__(
        self,
        policy: RetryPolicy,
        concurrency: int = 8,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.policy = policy
        self._limit = asyncio.Semaphore(concurrency)
        self._http: aiohttp.ClientSession | None = None
        #: How the back-off between attempts is waited (a test records the waits).
        self._sleep = sleep

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
                # A redirect could point a signed body anywhere; receivers give the final URL.
                auto_decompress=True,
            )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def attempt(self, url: str, body: bytes, headers: dict[str, str]) -> AttemptResult:
        """One POST; never raises for a network or receiver failure."""
        if self._http is None:
            return AttemptResult(False, "the notifier is not running", retry=False)
        async with self._limit:
            try:
                async with self._http.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        return AttemptResult(True)
                    return AttemptResult(
                        False,
                        f"the receiver answered HTTP {response.status}",
                        retry=_retryable(response.status),
                    )
            except TimeoutError:
                return AttemptResult(
                    False, f"the receiver did not answer within {self.policy.timeout:g} s"
                )
            except aiohttp.ClientConnectorError as e:
                why = (
                    e.os_error.strerror if e.os_error and e.os_error.strerror else type(e).__name__
                )
                return AttemptResult(False, f"cannot connect to the receiver ({why})")
            except aiohttp.InvalidURL:
                return AttemptResult(False, "the receiver's URL is not valid", retry=False)
            except (aiohttp.ClientError, OSError) as e:
                return AttemptResult(False, f"the connection failed ({type(e).__name__})")

    async def deliver(
        self,
        url: str,
        body: bytes,
        headers: Callable[[], dict[str, str]],
        *,
        on_attempt: Callable[[int, AttemptResult], Awaitable[None]] | None = None,
        what: str = "message",
    ) -> tuple[int, AttemptResult]:
        """Attempt until delivered, a permanent failure, or the last attempt;
        returns (attempts made, last result)."""
        result = AttemptResult(False, "not attempted")
        attempt = 0
        for attempt in range(1, self.policy.max_attempts + 1):
            result = await self.attempt(url, body, headers())
            if on_attempt is not None:
                await on_attempt(attempt, result)
            if result.ok or not result.retry or attempt == self.policy.max_attempts:
                break
            delay = self.policy.delay(attempt)
            log.info(
                "notify: %s attempt %d failed (%s); retrying in %g s",
                what,
                attempt,
                result.error,
                delay,
            )
            await self._sleep(delay)
        return attempt, result
