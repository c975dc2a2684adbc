"""The errors of the feedback store: each carries the HTTP status the web layer answers with
and a message a rater can act on."""

from __future__ import annotations


class FeedbackError(Exception):
    """An operation refused; `status` is the HTTP status the web layer answers with."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(FeedbackError):
    status = 404


class Conflict(FeedbackError):
    status = 409


class Invalid(FeedbackError):
    status = 422
