"""`medals bench gpu` (c) and (e): whole requests through `segment`, from array to labels.

(c) `measure_two_stage`: 24 structures on a synthetic CT with random official-size networks; the text tower is a
tiny random MPNet (`medals.weights.testing`) projecting to the official query width, a stand-in for BioLORD whose
cost is a few milliseconds either way. The request runs once untimed on a small image first (kernel loading; it
also caches the prompts' embeddings, as a running engine has them), then once timed.

(e) `measure_demo`: the bundled demo model on the bundled sample, on the CPU in float32 and on the device as the
engine runs there (autocast on CUDA); labels must agree except where a probability of the CPU run is within
`NEAR_THRESHOLD` of the threshold.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from .child import peak_memory_mb, reset_peak_memory, synchronize

CT_STRUCTURES = ("liver", "spleen", "left kidney", "right kidney", "stomach", "gallbladder", "esophagus", "pancreas",
                 "duodenum", "colon", "small intestine", "urinary bladder", "aorta", "inferior vena cava",
                 "portal vein and splenic vein", "left adrenal gland", "right adrenal gland", "left lung lower lobe",
                 "right lung lower lobe", "heart", "spinal cord", "vertebrae", "trachea", "sacrum")
NEAR_THRESHOLD = 1e-3
SYNTHETIC_ORGANS = (  # (centre, radii) in the volume's [-1, 1]³ (k, j, i) frame, and the 0–255 value
    ((0.5, -0.1, -0.35), (0.35, 0.35, 0.25), 20), ((0.5, -0.1, 0.35), (0.35, 0.35, 0.25), 20),  # lungs
    ((0.0, 0.55, 0.0), (1.2, 0.1, 0.08), 230),  # spine
    ((-0.2, 0.0, -0.3), (0.25, 0.3, 0.3), 140), ((-0.2, 0.2, 0.4), (0.15, 0.15, 0.12), 125),
    ((-0.6, 0.3, 0.2), (0.1, 0.1, 0.08), 150))


def synthetic_ct(shape, seed: int = 0) -> np.ndarray:
    """A (k, j, i) float32 0–255 CT-like volume: an elliptic body of soft tissue with darker lungs, a bright
    spine and organ-like blobs, plus noise."""
    rng = np.random.default_rng(seed)
    k, j, i = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    k, j, i = k[:, None, None], j[None, :, None], i[None, None, :]
    image = np.where(j ** 2 / 0.7 + i ** 2 / 0.9 <= 1, np.float32(110), np.float32(5)) + np.zeros_like(k)
    for centre, radii, value in SYNTHETIC_ORGANS:
        image[sum(((axis - c) / r) ** 2 for axis, c, r in zip((k, j, i), centre, radii)) <= 1] = value
    image += rng.normal(0, 4, shape).astype(np.float32)
    return np.clip(image, 0, 255, out=image)


def random_model(stages: dict, device):
    """A LoadedModel with random networks for `stages` (name → StageConfig dict) and a tiny random text tower."""
    import torch

    from ..config import ModelConfig, StageConfig
    from ..modeling import MedalSNet
    from ..text import TextEncoder
    from ..weights.model_folder import LoadedModel
    from ..weights.testing import TINY_TEXT, write_tiny_tower

    configs = {name: StageConfig.from_dict(values) for name, values in stages.items()}
    torch.manual_seed(0)
    nets = {name: MedalSNet(config.net).eval().to(device) for name, config in configs.items()}
    text = dataclasses.replace(TINY_TEXT, query_dim=next(iter(configs.values())).net.query_dim)
    with tempfile.TemporaryDirectory() as scratch:
        encoder = TextEncoder(text, write_tiny_tower(Path(scratch))).eval().to(device)
    return LoadedModel(ModelConfig("random-official", text, configs), Path(), device, encoder, nets)


def measure_two_stage(spec: dict) -> dict:
    """Child: seconds from array to labels for `classes` prompts on a synthetic CT of `shape` at `spacing`,
    each stage's windows and the second its last window was done, the fine stage's region and the peak memory; `{"failed": message, "error":
    class name}` when the request fails (OutOfMemory: the window batch does not fit)."""
    import torch

    from ..errors import OutOfMemory
    from ..pipeline import Prompt, SegmentOptions, segment

    device = torch.device(spec["device"])
    model = random_model(spec["stages"], device)
    image, spacing = synthetic_ct(spec["shape"]), tuple(spec["spacing"])
    prompts = [Prompt(text, value) for value, text in enumerate(CT_STRUCTURES[:spec["classes"]], start=1)]
    options = SegmentOptions(window_batch=spec["window_batch"])
    stages = {}

    def progress(event):
        stages[event.stage] = {"windows": event.total, "done_at": time.perf_counter()}

    try:
        segment(model, image[::4, ::4, ::4], tuple(4 * s for s in spacing), prompts, modality="ct", options=options,
                device=device)
        synchronize(device)
        reset_peak_memory(device)
        start = time.perf_counter()
        result = segment(model, image, spacing, prompts, modality="ct", options=options, progress=progress,
                         device=device)
    except (OutOfMemory, RuntimeError) as error:  # the engine's own message, or whatever escaped it
        return {"failed": str(error).strip().splitlines()[0], "error": type(error).__name__}
    synchronize(device)
    seconds = time.perf_counter() - start
    for stage in stages.values():
        stage["done_at"] -= start
    box = result.box
    return {"seconds": seconds, "stages": stages, "fine_region": [box[2 * a + 1] - box[2 * a] + 1 for a in range(3)],
            "labelled_voxels": int((result.labels > 0).sum()), "peak_mb": peak_memory_mb(device),
            "window_batch": spec["window_batch"]}


def measure_demo(spec: dict) -> dict:
    """Child: the demo model on the bundled sample (its central `crop` when given), CPU float32 against the
    device; voxels whose labels differ, and how many of them a CPU probability within NEAR_THRESHOLD of the
    threshold excuses."""
    import torch

    from ..demo import DEMO_MODEL, PROMPTS, SAMPLES
    from ..io import read_volume
    from ..pipeline import SegmentOptions, segment
    from ..pipeline.labels import THRESHOLD
    from ..weights import load_model

    device = torch.device(spec["device"])
    model = load_model(DEMO_MODEL)
    volume = read_volume(SAMPLES / "mni152_t1.nii.gz")
    image = volume.array.astype(np.float32)
    if spec["crop"]:
        image = image[tuple(slice((n - c) // 2, (n - c) // 2 + c) for n, c in zip(image.shape, spec["crop"]))]
    results, seconds = {}, {}
    for name, where in (("cpu", torch.device("cpu")), ("device", device)):
        start = time.perf_counter()
        results[name] = segment(model, image, volume.spacing, list(PROMPTS), direction=volume.direction,
                                modality="mri", options=SegmentOptions(probabilities=True), device=where)
        seconds[name] = time.perf_counter() - start
    reference, tried = results["cpu"], results["device"]
    differ = reference.labels != tried.labels
    margin = np.min([np.abs(p - THRESHOLD) for p in reference.probabilities.values()], axis=0)
    unexcused = differ & (margin > NEAR_THRESHOLD)
    return {"shape": list(image.shape), "labelled_voxels": int((reference.labels > 0).sum()),
            "differing_voxels": int(differ.sum()), "unexcused_voxels": int(unexcused.sum()),
            "largest_unexcused_margin": float(margin[unexcused].max()) if unexcused.any() else 0.0,
            "max_probability_diff": max(float(np.abs(reference.probabilities[v] - tried.probabilities[v]).max())
                                        for v in reference.probabilities),
            "cpu_seconds": seconds["cpu"], "device_seconds": seconds["device"], "passed": not unexcused.any()}
