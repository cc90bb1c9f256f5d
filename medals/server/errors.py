"""Errors only the server raises, each with the HTTP status it answers with.

Every error body is `{"detail": one line, "code": snake_case class name}`; clients branch on `code`
(e.g. `image_not_found` means "upload the image again"), people read `detail`.
"""
from __future__ import annotations

import re

from ..errors import InputError, MedalSError


class Unauthorized(MedalSError):
    """The request carries no token or the wrong one."""

    http_status = 401


class PayloadTooLarge(InputError):
    """A body, an image or a prompt list is over the server's limits."""

    http_status = 413


class ImageNotFound(MedalSError):
    """The image id was never uploaded here, or was evicted from the cache: upload it again."""

    http_status = 404


class JobNotFound(MedalSError):
    """No job has this id (never submitted, or forgotten after its result aged out)."""

    http_status = 404


class ProbabilityMapNotFound(MedalSError):
    """The job kept no probability map for this label (not one of its prompts, or not asked for)."""

    http_status = 404


class JobNotFinished(MedalSError):
    """The job's labels or probability maps were asked for before it succeeded."""

    http_status = 409


class QueueFull(MedalSError):
    """Too many jobs are waiting; try again later."""

    http_status = 503


class CacheBusy(MedalSError):
    """Uploads in progress already hold the image cache's memory; try again later."""

    http_status = 503


class RequestIdConflict(MedalSError):
    """A request id was sent again with a different request."""

    http_status = 409


def error_code(error: MedalSError) -> str:
    """`ImageNotFound` → "image_not_found": the machine-readable half of an error body."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def error_body(error: MedalSError) -> dict:
    return {"detail": str(error), "code": error_code(error)}
