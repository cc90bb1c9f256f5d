"""`medals bench gpu` (b) and (d): one window of the pipeline at a given batch, and a batch past the device's memory.

(b) `measure_window` times the pipeline's window function (an unprompted forward as the coarse stage runs it, or
the complementary prompted pair of the fine stage) on random inputs with a random network of a given plan, under
the engine's own autocast, and reports the peak memory; `largest_batch` estimates from the batch-1 figures how
many windows fit in the device's free memory. (d) `measure_out_of_memory` sends the pipeline's window loop a batch
of windows twice the size of that memory and checks that the engine reports OutOfMemory, frees what it held and
gives the same probabilities as before on the next request.

On the CPU the device's memory is simulated: `SimulatedMemoryLimit` raises the CUDA allocator's own error
(torch.OutOfMemoryError) for a batch over the limit, so the same code path runs, and every report says so.
"""
from __future__ import annotations

import math
import time

from .child import current_memory_mb, peak_memory_mb, reset_peak_memory, synchronize

SIMULATED_WINDOWS = 2.5
"""On the CPU, the simulated device holds this many windows above what the network itself takes."""
FREE_FRACTION = 0.9
"""Share of the memory left beside the network a batch estimate may use (fragmentation takes the rest)."""


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def available_memory_mb(device) -> float:
    """Free device memory (CUDA), or the machine's available memory (CPU)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0] / 2 ** 20
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) / 1024


def window_cost_mb(peak_mb: float, baseline_mb: float, crop) -> float:
    """Memory one window takes: its peak above the network and inputs, and at least its own float32 input (a
    resident set can hide a small growth)."""
    return max(peak_mb - baseline_mb, math.prod(crop) * 4 / 2 ** 20)


def probabilities_mb(crop, classes: int) -> float:
    """What the window loop holds beside the forward per window: the float32 logits, probabilities and their
    Gaussian-weighted copy."""
    return 3 * classes * math.prod(crop) * 4 / 2 ** 20


def simulated_memory_mb(baseline_mb: float, window_mb: float) -> float:
    """The CPU's pretend device: the network and inputs plus SIMULATED_WINDOWS windows."""
    return baseline_mb + SIMULATED_WINDOWS * window_mb


def largest_batch(available_mb: float, baseline_mb: float, window_mb: float) -> int:
    """Windows per forward that fit in `available_mb` when the network and inputs take `baseline_mb` and each
    window `window_mb` more (at least 1)."""
    return max(1, math.floor((available_mb - baseline_mb) * FREE_FRACTION / max(window_mb, 1e-6)))


def _setup(spec: dict):
    """Device, a random network of the spec's plan for its crop, N random queries, one random window + prompt."""
    import torch

    from ..config import NetConfig
    from ..modeling import MedalSNet
    from .prompts import synthetic_window

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    net = MedalSNet(NetConfig.from_dict(spec["plan"]).with_crop(spec["crop"])).eval().to(device)
    queries = torch.randn(spec["classes"], net.config.query_dim).to(device)
    image, prompt = synthetic_window(tuple(spec["crop"]), spec["classes"])
    return device, net, queries, image, prompt


def measure_window(spec: dict) -> dict:
    """Child: seconds per batch of `spec["batch"]` windows (median of `repeats` after a batch-1 warm-up) and peak
    memory; `{"failed": message}` when the batch does not run (out of memory, or too large for a kernel)."""
    import torch

    from ..device import autocast
    from ..pipeline.prompting import random_permutation
    from ..pipeline.sliding_window import Execution, window_logits

    device, net, queries, image, prompt = _setup(spec)
    available = available_memory_mb(device)
    batch = spec["batch"]
    images = image.expand(batch, *image.shape[1:]).contiguous().to(device)
    prompts = prompt.expand(batch, *prompt.shape[1:]).contiguous().to(device) if spec["prompted"] else None
    values = torch.arange(1, spec["classes"] + 1, device=device)
    execution = Execution(device, block_permutation=random_permutation(0))
    baseline = current_memory_mb(device)

    def run(count):
        with torch.no_grad(), autocast(device):
            window_logits(net, queries, images[:count], None if prompts is None else prompts[:count], values, 0,
                          execution)
        synchronize(device)

    run(1)  # warm-up: kernel selection and the allocator's first blocks
    reset_peak_memory(device)
    times = []
    try:
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - start)
    except RuntimeError as error:  # out of memory, or a size some kernel cannot take
        return {"failed": _first_line(error), "batch": batch}
    return {"batch": batch, "seconds": sorted(times)[len(times) // 2], "peak_mb": peak_memory_mb(device),
            "baseline_mb": baseline, "available_mb": available}


class SimulatedMemoryLimit:
    """A network on a pretend device of `limit_mb` where each window takes `window_mb`: a forward over more
    windows than fit raises torch.OutOfMemoryError, as the CUDA allocator would, before computing anything."""

    def __init__(self, net, window_mb: float, limit_mb: float):
        self.net, self.window_mb, self.limit_mb = net, window_mb, limit_mb

    def __call__(self, queries, image, *prompts):
        needed = image.shape[0] * self.window_mb
        if needed > self.limit_mb:
            import torch

            raise torch.OutOfMemoryError(f"simulated device: {needed:.0f} MB needed, {self.limit_mb:.0f} MB free")
        return self.net(queries, image, *prompts)


def measure_out_of_memory(spec: dict) -> dict:
    """Child: one window's probabilities, then a request of twice the free memory's worth of windows in one batch
    (window_batch = all of them), then the one window again. Passes when the oversized request ends in
    OutOfMemory, the memory held before it is held again after it, and the repeat equals the first result."""
    import torch

    from ..errors import OutOfMemory
    from ..pipeline.sliding_window import Execution, stage_probabilities
    from ..pipeline.windows import sliding_windows

    device, net, queries, image, _ = _setup(spec)
    volume = image[0, 0]
    window = sliding_windows(volume.shape, tuple(spec["crop"]))
    values = list(range(1, spec["classes"] + 1))

    def request(network, windows, batch):
        return stage_probabilities(network, queries, volume, windows, values, execution=Execution(device, batch),
                                   stage="fine")

    baseline = current_memory_mb(device)
    reset_peak_memory(device)
    first = request(net, window, 1)
    window_mb = window_cost_mb(peak_memory_mb(device), baseline, spec["crop"])
    simulated = device.type != "cuda"
    available = simulated_memory_mb(baseline, window_mb) if simulated else available_memory_mb(device)
    count = math.ceil(2 * available / window_mb)
    network = SimulatedMemoryLimit(net, window_mb, available - baseline) if simulated else net
    held_before = current_memory_mb(device)
    outcome = {"windows": count, "window_mb": window_mb, "available_mb": available, "simulated": simulated}
    try:
        request(network, window * count, count)
        outcome["error"] = None
    except OutOfMemory as error:
        outcome["error"], outcome["message"] = "OutOfMemory", str(error)
    except RuntimeError as error:  # escaped the engine: the user would see torch's own text
        outcome["error"], outcome["message"] = f"{type(error).__module__}.{type(error).__name__}", _first_line(error)
    outcome["held_before_mb"], outcome["held_after_mb"] = held_before, current_memory_mb(device)
    repeat = request(net, window, 1)
    outcome["repeat_difference"] = float((repeat - first).abs().max())
    # The CPU's resident set does not shrink on demand, so only the CUDA allocator's figure must come back.
    freed = simulated or outcome["held_after_mb"] <= held_before + 1
    outcome["passed"] = outcome["error"] == "OutOfMemory" and freed and outcome["repeat_difference"] <= 1e-3
    return outcome
