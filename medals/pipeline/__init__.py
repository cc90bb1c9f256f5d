"""Two-stage inference: text prompts (and optional masks) → labels on the input grid.

Public API: `segment` and its request/result types. The core (`two_stage.segment_volume`, `stage.run_stage`,
`sliding_window.stage_probabilities`) takes the stage networks, their configs and the query tensor directly.
"""
from .api import segment
from .request import ProgressEvent, Prompt, SegmentOptions, SegmentResult

__all__ = ["Prompt", "ProgressEvent", "SegmentOptions", "SegmentResult", "segment"]
