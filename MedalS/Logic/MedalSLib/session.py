"""A segmentation session: what the module keeps between requests, and the three steps of each request.

1. `prepare_segment` / `prepare_refine` (GUI thread): read voxels, prompts and painted seeds from the scene.
2. `run` (worker thread): upload the volume if the engine does not hold it, run the job, fetch the labels.
3. `apply` (GUI thread): write the labels into segments and keep what undoes them; write probability maps.

Between requests the session keeps the engine client and what it said about itself, the last uploaded
volume (by fingerprint, so an unchanged volume is neither copied nor hashed again), each segmentation's
state right after its last result (so a refinement knows what the user edited), and an undo stack.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .client import EngineClient, ImageRef, JobProgress, SegmentationResult, Structure
from .errors import InputError
from .jobs import Progress, Request
from .launcher import LocalEngine
from .probability_maps import write_probability_maps
from .prompts import edited_region, painted_masks, parse_prompts, segments_by_prompt
from .results import ResultSnapshot, write_results
from .scene import Box, VolumeGeometry, read_volume, volume_fingerprint, volume_geometry

MODALITY_CHOICES = ("auto", "ct", "mri", "us", "pet", "microscopy")
""""auto" lets the engine infer the modality from the prompts' words."""
STAGE_CHOICES = (("coarse", "fine"), ("coarse",), ("fine",))
UNDO_DEPTH = 10


@dataclass(frozen=True)
class EngineOptions:
    """The advanced options of a request.

    stages: the passes to run, in order: "coarse" (whole volume, low resolution), "fine" (region of interest,
        high resolution, prompted by the coarse labels and/or the painted masks), or both.
    refine_iterations: self-refinement passes per window, each prompted by the window's own prediction.
    keep_largest: keep only the largest connected piece of every structure.
    probabilities: also bring back each structure's probability map (written as one volume per structure).
    """

    stages: tuple[str, ...] = STAGE_CHOICES[0]
    refine_iterations: int = 0
    keep_largest: bool = False
    probabilities: bool = False

    def for_protocol(self, region: Box | None) -> dict:
        if self.stages not in STAGE_CHOICES:
            raise InputError(f"stages {self.stages} are not one of {STAGE_CHOICES}")
        options = {"stages": list(self.stages), "refine_iterations": self.refine_iterations,
                   "keep_largest": self.keep_largest, "probabilities": self.probabilities}
        if region is not None:
            options["box"] = inclusive(region)
        return options


@dataclass(frozen=True)
class EngineChoice:
    """Which engine to use: a running server at `url` (with its `token`), or a local one started by `command`
    (see `launcher.engine_command`) in the environment `env` (None: this process's)."""

    url: str = ""
    token: str = ""
    command: tuple[str, ...] = ()
    env: dict | None = field(default=None, compare=False)


@dataclass
class PreparedRequest:
    """One request as read from the scene: everything `run` and `apply` need, no MRML objects."""

    mode: str
    """"text" (prompts only) or "hybrid" (with painted masks, recomputing only `region`)."""
    volume_id: str
    segmentation_id: str
    fingerprint: str
    geometry: VolumeGeometry
    voxels: np.ndarray | None
    """(k, j, i) copy of the volume; None when the session already holds this fingerprint's image."""
    prompts: dict[int, str]
    """Label value → prompt, in the order typed (1, 2, ...)."""
    modality: str | None
    options: EngineOptions
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    """Label value → painted uint8 mask (k, j, i) on the volume's grid (hybrid only)."""
    region: Box | None = None
    """Where a refinement recomputes and writes (hybrid only); None: the whole volume."""


@dataclass
class _UndoEntry:
    snapshot: ResultSnapshot
    baseline_key: tuple[str, str]
    baseline_before: dict[str, np.ndarray] | None


def inclusive(box: Box) -> list[int]:
    """The protocol's (k0, k1, j0, j1, i0, i1) with inclusive ends."""
    return [bound for start, stop in zip(box.start, box.stop) for bound in (start, stop - 1)]


def from_inclusive(bounds) -> Box:
    k0, k1, j0, j1, i0, i1 = (int(b) for b in bounds)
    return Box((k0, j0, i0), (k1 + 1, j1 + 1, i1 + 1))


def labels_over(result: SegmentationResult, region: Box) -> np.ndarray:
    """The result's labels over `region`: its box's labels where the two meet, 0 elsewhere in the region."""
    result_box = from_inclusive(result.box)
    labels = np.zeros(region.shape, np.int16)
    start = tuple(map(max, region.start, result_box.start))
    stop = tuple(map(min, region.stop, result_box.stop))
    if all(a < b for a, b in zip(start, stop)):
        target = tuple(slice(a - r, b - r) for a, b, r in zip(start, stop, region.start))
        source = tuple(slice(a - r, b - r) for a, b, r in zip(start, stop, result_box.start))
        labels[target] = result.labels[source]
    return labels


def describe_progress(job: JobProgress) -> Progress:
    """A job poll in words, with the finished fraction of the current stage."""
    if job.state == "queued":
        ahead = job.queue_position or 0
        return Progress(f"Waiting for the engine ({ahead} request{'s' if ahead != 1 else ''} ahead)")
    if job.state == "running" and job.total:
        eta = f", about {job.eta_seconds:.0f} s left" if job.eta_seconds is not None else ""
        return Progress(f"{job.stage.capitalize()} stage: {job.done} of {job.total} windows{eta}",
                        job.done / job.total)
    if job.state == "running":
        return Progress(f"{(job.stage or 'Starting').capitalize()}{': ' + job.message if job.message else ''}")
    return Progress(f"Engine job {job.state}")


def describe_engine(info: dict, where: str) -> str:
    """The engine's info in words: version, protocol, model, its devices with their free memory (a server
    over several devices lists each; older engines send only `device`) and a precision other than auto."""

    def device_words(device: dict) -> str:
        memory = ""
        if device.get("memory_total_bytes"):
            memory = (f", {device['memory_free_bytes'] / 2**30:.1f} of {device['memory_total_bytes'] / 2**30:.1f} "
                      "GB free")
        return f"{device.get('name', '?')} ({device.get('device', '?')}{memory})"

    devices = info.get("devices") or [info.get("device") or {}]
    arithmetic = {"bf16": ", in bfloat16", "fp32": ", in float32"}.get(info.get("precision"), "")
    return (f"Connected to {where}: medals {info.get('engine')} (protocol v{info.get('protocol')}), model "
            f"{info.get('model')}, on {' and '.join(device_words(device) for device in devices)}{arithmetic}.")


class SegmentationSession:
    """The module's state between requests, for one MRML scene."""

    def __init__(self, scene):
        self.scene = scene
        self.client: EngineClient | None = None
        self.info: dict = {}
        self._image: tuple[str, ImageRef] | None = None
        self._baselines: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._undo: list[_UndoEntry] = []
        self.local_engine: LocalEngine | None = None

    # -- engine ----------------------------------------------------------------------------------------------

    def ensure_engine(self, choice: EngineChoice, request: Request | None = None) -> dict:
        """Be connected to the chosen engine, starting the local one if it is not running; returns its info.

        Worker thread: starting a local engine waits for its model to load. A local engine keeps running
        between requests and is restarted only when its command changes.
        """
        def report(text):
            if request is not None:
                request.report(Progress(text))

        if choice.command:
            if self.local_engine is not None and (self.local_engine.command != list(choice.command)
                                                  or not self.local_engine.running):
                self.stop_local_engine()
            if self.local_engine is None:
                self.local_engine = LocalEngine(list(choice.command), env=choice.env)
            if not self.local_engine.running:
                report("Starting the local engine (the model loads first)")
                self.local_engine.start(request.cancel_requested if request is not None else None)
            url, token = self.local_engine.url, self.local_engine.token
        elif choice.url:
            url, token = choice.url, choice.token
        else:
            raise InputError("no engine is chosen: enter the server's URL, or pick a local engine")
        if self.client is None or self.client.url != url.rstrip("/") or self.client.token != (token or None):
            report("Connecting to the engine")
            self.connect(url, token)
        return self.info

    def stop_local_engine(self) -> None:
        """Stop the local engine this session started (if any) and forget the connection to it."""
        if self.local_engine is None:
            return
        if self.client is not None and self.client.url == (self.local_engine.url or "").rstrip("/"):
            self.disconnect()
        self.local_engine.stop()
        self.local_engine = None

    def connect(self, url: str, token: str | None = None) -> dict:
        """Connect to the engine at `url` (checks the protocol version); returns its info. Worker thread."""
        client = EngineClient(url, token or None)
        info = client.connect()
        self.client, self.info, self._image = client, info, None
        return info

    def disconnect(self) -> None:
        self.client, self.info, self._image = None, {}, None

    @property
    def vocabulary(self) -> list[Structure]:
        """The structures the connected engine knows; empty while none is connected."""
        return self.client.vocabulary if self.client is not None else []

    # -- requests ----------------------------------------------------------------------------------------------

    def prepare_segment(self, volume_node, segmentation_node, prompt_text: str, modality: str = "auto",
                        options: EngineOptions = EngineOptions()) -> PreparedRequest:
        """A text-only request: every prompt segmented afresh over the whole volume."""
        return self._prepare("text", volume_node, segmentation_node, prompt_text, modality, options)

    def prepare_refine(self, volume_node, segmentation_node, prompt_text: str, modality: str = "auto",
                       options: EngineOptions = EngineOptions(), overrides: dict[str, str] | None = None) \
            -> PreparedRequest:
        """A hybrid request: the painted segments are spatial prompts, and only the edited region is redone.

        The edited region is where the prompts' segments now differ from the last result written into this
        segmentation (all painted voxels when there was none), grown by a margin of context.
        """
        request = self._prepare("hybrid", volume_node, segmentation_node, prompt_text, modality, options)
        masks = painted_masks(segmentation_node, segments_by_prompt(segmentation_node,
                                                                     list(request.prompts.values()), overrides),
                              volume_node)
        if not masks:
            raise InputError("nothing is painted: paint seeds in a segment named like a prompt (or map a segment to "
                             "a prompt in the table), then Refine")
        baseline = self._baselines.get((request.segmentation_id, request.fingerprint), {})
        request.region = edited_region(masks, baseline, request.geometry)
        if request.region is None:
            raise InputError("nothing changed since the last result: paint or erase in a prompt's segment, then "
                             "Refine")
        labels = {prompt: value for value, prompt in request.prompts.items()}
        request.masks = {labels[prompt]: mask for prompt, mask in masks.items()}
        return request

    def run(self, prepared: PreparedRequest, request: Request | None = None) -> SegmentationResult:
        """Send the request and wait for its labels (worker thread); `request` gets progress and cancel."""
        if self.client is None:
            raise InputError("no engine is connected: start the local engine or connect to a server first")
        if prepared.voxels is not None:
            if request is not None:
                request.report(Progress("Preparing the volume"))
            self._image = (prepared.fingerprint, ImageRef.of(prepared.voxels, prepared.geometry.spacing,
                                                                 prepared.geometry.lps_direction()))
        elif self._image is None or self._image[0] != prepared.fingerprint:
            raise InputError("the engine connection changed after the request was prepared; run it again")
        image = self._image[1]
        if request is not None:
            request.report(Progress("Sending the request"))
        return self.client.segment(
            image, [(prompt, value) for value, prompt in prepared.prompts.items()],
            modality=prepared.modality, masks=prepared.masks or None, mode=prepared.mode,
            options=prepared.options.for_protocol(prepared.region),
            progress=(lambda job: request.report(describe_progress(job))) if request is not None else None,
            cancel=request.cancel_requested if request is not None else None)

    def apply(self, prepared: PreparedRequest, result: SegmentationResult) -> dict[str, dict]:
        """Write the result into its segmentation, and its probability maps (if any) into one volume per
        structure (GUI thread); returns prompt → the engine's statistics."""
        volume_node = self._node(prepared.volume_id, "input volume")
        segmentation_node = self._node(prepared.segmentation_id, "output segmentation")
        if volume_fingerprint(volume_node) != prepared.fingerprint:
            raise InputError(f"volume '{volume_node.GetName()}' changed while the engine worked; run again")
        if prepared.region is None:
            region, labels = from_inclusive(result.box), result.labels
        else:
            # An engine that refined its kept result changed labels beyond the requested region too (result.refined):
            # writing its whole box keeps the segments equal to the engine's result.
            region = from_inclusive(result.box).union(prepared.region)
            labels = labels_over(result, region)
        snapshot = write_results(segmentation_node, volume_node, labels, region, prepared.prompts,
                                 only_inside_box=prepared.region is not None, vocabulary=self.vocabulary)
        if result.probabilities:
            write_probability_maps(segmentation_node, volume_node,
                                   {prompt: result.probabilities[value] for value, prompt in prepared.prompts.items()
                                    if value in result.probabilities},
                                   from_inclusive(result.box), only_inside_box=prepared.region is not None)
        key = (prepared.segmentation_id, prepared.fingerprint)
        self._undo = (self._undo + [_UndoEntry(snapshot, key, self._baselines.get(key))])[-UNDO_DEPTH:]
        prompts = list(prepared.prompts.values())
        self._baselines[key] = painted_masks(segmentation_node, segments_by_prompt(segmentation_node, prompts),
                                             volume_node)
        return {prompt: result.stats.get(value, {}) for value, prompt in prepared.prompts.items()}

    # -- undo --------------------------------------------------------------------------------------------------

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def undo(self) -> None:
        """Put the segmentation of the last applied result back as it was before it."""
        if not self._undo:
            raise InputError("there is no MedalS result to undo")
        entry = self._undo.pop()
        entry.snapshot.restore()
        if entry.baseline_before is None:
            self._baselines.pop(entry.baseline_key, None)
        else:
            self._baselines[entry.baseline_key] = entry.baseline_before

    def forget_results(self) -> None:
        """Drop the undo stack and the last results (the scene they belong to is being closed)."""
        self._undo.clear()
        self._baselines.clear()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _prepare(self, mode, volume_node, segmentation_node, prompt_text, modality, options) -> PreparedRequest:
        if volume_node is None:
            raise InputError("select an input volume first")
        if segmentation_node is None:
            raise InputError("select or create an output segmentation first")
        prompts = parse_prompts(prompt_text)
        if not prompts:
            raise InputError("type at least one structure to segment, one per line (e.g. liver)")
        if modality not in MODALITY_CHOICES:
            raise InputError(f"modality {modality!r} is not one of {', '.join(MODALITY_CHOICES)}")
        fingerprint = volume_fingerprint(volume_node)
        cached = self._image is not None and self._image[0] == fingerprint
        voxels, geometry = (None, volume_geometry(volume_node)) if cached else read_volume(volume_node)
        return PreparedRequest(mode=mode, volume_id=volume_node.GetID(), segmentation_id=segmentation_node.GetID(),
                               fingerprint=fingerprint, geometry=geometry, voxels=voxels,
                               prompts={value: prompt for value, prompt in enumerate(prompts, start=1)},
                               modality=None if modality == "auto" else modality, options=options)

    def _node(self, node_id: str, role: str):
        node = self.scene.GetNodeByID(node_id)
        if node is None:
            raise InputError(f"the {role} was removed from the scene while the engine worked")
        return node
