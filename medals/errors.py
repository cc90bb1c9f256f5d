"""Errors the engine reports to people: one clear line each, never a traceback.

The CLI prints `str(error)` and exits non-zero; the server maps each class to an HTTP status.
"""


class MedalSError(Exception):
    """Base of every error meant for the user."""

    exit_code = 1
    http_status = 500


class InputError(MedalSError):
    """The request or a file cannot be used as given (bad shape, NaN voxels, unknown modality, ...)."""

    exit_code = 2
    http_status = 400


class WeightsError(MedalSError):
    """A checkpoint or model folder is missing, truncated or does not match the network."""

    exit_code = 3
    http_status = 500


class ModelNotFound(MedalSError):
    """No installed model has the requested name."""

    exit_code = 3
    http_status = 404


class Cancelled(MedalSError):
    """The job was cancelled; nothing was written."""

    exit_code = 130
    http_status = 409


class OutOfMemory(MedalSError):
    """The device ran out of memory; the message says what to try instead."""

    exit_code = 4
    http_status = 507
