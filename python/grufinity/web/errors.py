"""The one error type of the web API: an HTTP status and a one-line message for the page."""

from __future__ import annotations


class WebError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(message: str) -> WebError:
    return WebError(404, message)


def refused(message: str) -> WebError:
    return WebError(403, message)


def too_large(message: str) -> WebError:
    return WebError(413, message)


def busy(message: str) -> WebError:
    return WebError(429, message)


def invalid(message: str) -> WebError:
    return WebError(422, message)
