"""`medals bench server`: one request through `medals serve` on loopback against the same request in-process.

In one run: the model is loaded here and by a `medals serve` child on the same device; a synthetic volume
(256×256×200 by default) is uploaded once, untimed, as Slicer does once per volume change; then the same text
request runs alternately in-process (`pipeline.segment` on a worker thread) and through the torch-free client
(submit, poll, fetch the labels), after one untimed warm-up each. The medians are compared with the target overhead of
10 % + 0.3 s; the server's own run time of each job is also reported, so the protocol's share (round trip
minus run time) stands apart from the run-to-run noise of a busy machine.
"""
from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TARGET_FRACTION, TARGET_SECONDS = 0.10, 0.3
PROMPTS = (("liver", 1), ("spleen", 2), ("left kidney", 3))


def phantom(shape, seed: int = 0) -> np.ndarray:
    """A (k, j, i) int16 CT-like volume: air, a soft-tissue ellipsoid body with three brighter organs, noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    volume = np.full(shape, -1000, np.float32)
    volume[(j / 0.8) ** 2 + (i / 0.9) ** 2 < 1] = 40
    for centre, radius, value in (((0.1, -0.2, -0.3), 0.3, 60), ((0.0, 0.1, 0.45), 0.15, 50),
                                  ((-0.2, 0.3, -0.5), 0.12, 30)):
        volume[(k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 < radius ** 2] = value
    volume += rng.normal(0, 10, shape).astype(np.float32)
    return volume.astype(np.int16)


def run_server_bench(args) -> int:
    from ..pipeline import Prompt, segment
    from ..weights import load_model
    from ..device import pick_device
    from MedalSLib import client

    from .process import ServerProcess
    device = pick_device(args.device)
    shape, spacing = tuple(args.shape), tuple(args.spacing)
    volume = phantom(shape)
    prompts = [Prompt(text, label) for text, label in PROMPTS]
    model = load_model(args.model, device)
    print(f"medals bench server: {shape[2]}×{shape[1]}×{shape[0]} (i×j×k) int16 volume, spacing {spacing} mm "
          f"(k, j, i), {len(prompts)} prompts, model {model.config.name}, {device}", flush=True)

    # The in-process request runs on one persistent worker thread, as the server's jobs do: on a busy CPU the
    # same forward can be several times slower on the main thread, which would flatter the server.
    worker = ThreadPoolExecutor(max_workers=1)

    def in_process() -> np.ndarray:
        return worker.submit(segment, model, volume, spacing, prompts, modality="ct", device=device).result().labels

    protocol_prompts = [(prompt.text, prompt.label) for prompt in prompts]

    with ServerProcess(["--model", str(args.model), "--device", str(device)]) as server:
        engine = client.EngineClient(server.url, timeout=600)
        engine.connect()
        image = client.ImageRef.of(volume, spacing)
        start = time.perf_counter()
        engine.upload(image)
        print(f"first upload (untimed below): {time.perf_counter() - start:.2f} s, "
              f"{len(image.compressed()) / 2 ** 20:.1f} MiB compressed", flush=True)

        def round_trip() -> np.ndarray:
            state = engine.wait(engine.submit(image, protocol_prompts, modality="ct").job_id)
            labels = engine.result(state).full_labels()
            times["server run"].append(state.run_seconds)
            return labels

        times = {"in-process": [], "round trip": [], "server run": []}
        if not np.array_equal(in_process(), round_trip()):  # warm-up of both paths, and a check they agree
            print("warning: the server's labels differ from the in-process labels")
        times["server run"].clear()
        for _ in range(args.repeats):
            for name, call in (("in-process", in_process), ("round trip", round_trip)):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    worker.shutdown()
    local, remote = (statistics.median(times[name]) for name in ("in-process", "round trip"))
    overhead, allowed = remote - local, TARGET_FRACTION * local + TARGET_SECONDS
    for name, values in times.items():
        print(f"{name:<11} median {statistics.median(values):8.3f} s  ({', '.join(f'{v:.3f}' for v in values)})")
    protocol = statistics.median(r - s for r, s in zip(times["round trip"], times["server run"]))
    print(f"protocol   median {protocol:8.3f} s  (round trip minus the server's own run time: transfer, "
          "queueing, polling)")
    print(f"overhead   {overhead:8.3f} s = {100 * overhead / local:.1f} % of in-process; target ≤ 10 % + 0.3 s = "
          f"{allowed:.3f} s: {'met' if overhead <= allowed else 'NOT met'}")
    return 0


def register(kinds) -> None:
    """Add `server` to the `medals bench` subcommands."""
    bench = kinds.add_parser("server", help="round-trip time through `medals serve` against in-process time",
                             description=__doc__.split("\n\n")[0])
    bench.add_argument("--model", required=True, help="installed model name or model folder")
    bench.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    bench.add_argument("--shape", type=int, nargs=3, default=[200, 256, 256], metavar=("K", "J", "I"),
                       help="volume shape in (k, j, i) order (default %(default)s)")
    bench.add_argument("--spacing", type=float, nargs=3, default=[2.5, 0.8, 0.8], metavar=("K", "J", "I"),
                       help="voxel size in mm, (k, j, i) (default %(default)s)")
    bench.add_argument("--repeats", type=int, default=3, help="timed requests each way (default %(default)s)")
    bench.set_defaults(func=run_server_bench)
