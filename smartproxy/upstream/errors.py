"""Failures of one upstream attempt, translated once where they enter (the provider modules).

AttemptError            the attempt got no usable HTTP answer; fail over
├── UpstreamConnectError    refused, reset, DNS, dropped socket
└── UpstreamTimeoutError    connect / first byte / read timed out
"""

from __future__ import annotations


class AttemptError(Exception):
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamConnectError(AttemptError):
    kind = "error"


class UpstreamTimeoutError(AttemptError):
    kind = "timeout"
