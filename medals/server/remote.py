"""The engine behind a URL, called like `pipeline.segment`: what `medals segment --server URL` uses.

It goes through the same torch-free client as the Slicer module (MedalS/Logic/MedalSLib/client.py, which the
medals wheel installs as the `MedalSLib` package), so the command line and Slicer exercise one protocol
implementation.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Callable

import numpy as np
from MedalSLib import client  # the Slicer module's client package, which the medals wheel carries too

from ..errors import Cancelled, InputError, MedalSError, OutOfMemory
from ..pipeline.request import ProgressEvent, Prompt, SegmentOptions, SegmentResult

# The engine's error codes (see medals.server.errors.error_code) → the error the command line reports.
ERROR_KINDS = {"input_error": InputError, "invalid_request": InputError, "payload_too_large": InputError,
               "out_of_memory": OutOfMemory, "cancelled": Cancelled}


def options_body(options: SegmentOptions) -> dict:
    """SegmentOptions as the protocol's `options` object."""
    values = dataclasses.asdict(options)
    values["stages"] = list(options.stages)
    values["box"] = list(options.box) if options.box is not None else None
    return values


def segment_remote(url: str, image: np.ndarray, spacing, prompts: list[Prompt], *, token: str | None = None,
                   direction=None, modality: str | None = None, masks: dict[int, np.ndarray] | None = None,
                   options: SegmentOptions = SegmentOptions(), progress: Callable[[ProgressEvent], None] | None = None,
                   cancel: threading.Event | None = None, timeout: float = 60.0, retries: int = 3) -> SegmentResult:
    """`pipeline.segment` run by the engine at `url`: image (k, j, i), spacing in mm (k, j, i), direction (ITK,
    optional; sent with the image), masks as label → (k, j, i) uint8 on the image grid. Returns labels on the
    whole grid, and with `options.probabilities` each prompt's probability map on the whole grid too (0 outside
    the box; sent in steps of 1/255). With masks, the engine refines its kept result for this image, prompts and
    options when it still has one (`SegmentResult.refined`: only the windows around the edit ran, labels are 0
    outside the returned box where the kept result's stand); `options.box` names the edit, else the engine
    compares the masks with the kept ones.

    Errors come back as MedalSError subclasses (InputError for a refused request, Cancelled, OutOfMemory, or
    MedalSError when the engine cannot be reached or speaks another protocol). `timeout` bounds each socket
    operation in seconds; `retries` is how often a dropped connection is tried again.
    """
    def report(state) -> None:
        message = state.message or (f"waiting, {state.queue_position} jobs ahead" if state.state == "queued" else "")
        progress(ProgressEvent(state.stage or state.state, state.done, state.total, message))

    try:
        engine = client.EngineClient(url, token, timeout=timeout, retries=retries)
        engine.connect()
        result = engine.segment(client.ImageRef.of(image, spacing, direction), [(p.text, p.label) for p in prompts],
                                modality=modality, masks=masks, options=options_body(options),
                                progress=report if progress is not None else None, cancel=cancel)
    except client.EngineError as error:
        raise ERROR_KINDS.get(error.code, MedalSError)(f"engine at {url}: {error}") from None
    except client.ModuleError as error:
        raise MedalSError(str(error)) from None
    probabilities = result.full_probabilities() if options.probabilities else None
    return SegmentResult(result.full_labels(), result.box, result.stats, probabilities, result.modality,
                         result.refined)
