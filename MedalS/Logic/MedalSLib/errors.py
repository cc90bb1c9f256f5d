"""Errors the Slicer module shows to people: one clear line each, never a traceback.

The widget catches `ModuleError` and shows `str(error)`; anything else is a bug and goes to the log.
"""


class ModuleError(Exception):
    """Base of every error meant for the user of the Slicer module."""


class InputError(ModuleError):
    """The scene cannot be used as given (no voxels, a colour volume, no prompts, mismatched transforms, ...)."""


class EngineStartError(ModuleError):
    """The local engine could not be installed, started or stopped; the message carries the engine's own words."""
