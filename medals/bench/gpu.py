"""`medals bench gpu`: one check that the engine is ready for a CUDA device, run in a single call.

(a) parity: the official outputs in float32 (the tests' tolerances) and under autocast (largest differences);
(b) forward: one official-size window (224×224×128 at N = 2 and 24, 192³ at N = 24): time and peak memory at
window batch 1 and at the largest batch that fits; (c) two-stage: 24 structures on a synthetic 512×512×300 CT at
0.8×0.8×1.5 mm with random official-size networks, from array to labels (the P5 goal: ≤ 10 s on an H100/H200);
(d) out of memory: a request past the device's memory ends in OutOfMemory and the engine stays usable; (e) demo:
the bundled model on the bundled sample gives the CPU float32 labels on the device.

Each part runs in a fresh child process (its own peak memory; an out-of-memory error cannot touch the next part)
with the device synchronised before every clock read and the peak counter reset per measurement; a part that
breaks is reported and the others still run. The table grows one row per result and the JSON file is rewritten
after every part. Exit status 1 when a correctness check fails (float32 parity, out of memory, demo labels) or a
part breaks; timings and the P5 goal are reported, not enforced. `--quick` runs the same code at small sizes
(the CI check on the CPU, where the device's memory is simulated and every row that depends on it says so).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import OFFICIAL_COARSE, OFFICIAL_FINE, NetConfig, StageConfig
from ..weights.testing import TINY_PLAN
from .child import in_child

SECTIONS = ("parity", "forward", "two-stage", "memory", "demo")
LETTERS = dict(zip(SECTIONS, "abcde"))
CT_SPACING = (1.5, 0.8, 0.8)
"""(k, j, i) mm of the synthetic CT."""
CLASSES = 24
P5_SECONDS = 10.0
P5_DEVICES = ("H100", "H200")
BATCH_STEP_DOWN = 0.75
"""When the estimated largest batch does not fit after all, the next try is this fraction of it."""


@dataclass(frozen=True)
class Sizes:
    """What each part runs: parity fixtures and call forms; the network plan (widths; its crop is replaced) of
    (b) to (d); windows (stage, crop, classes, prompted) for (b), the CT shape (k, j, i) and stages for (c), the
    window for (d); the demo's central crop (None: all of it)."""

    fixtures: str
    """Which network fixtures of the folder: "all", or the "smallest" (fewest voxels)."""
    calls: tuple[str, ...]
    pipeline_fixture: bool
    plan: NetConfig
    windows: tuple[tuple[str, tuple[int, int, int], int, bool], ...]
    repeats: int
    ct_shape: tuple[int, int, int]
    stages: dict
    memory_window: tuple[tuple[int, int, int], int]
    demo_crop: tuple[int, int, int] | None


FULL = Sizes(fixtures="all",
             calls=("logits_mc", "logits_sc", "logits_none", "logits_zero_prompts"), pipeline_fixture=True,
             plan=NetConfig(), windows=(("coarse", OFFICIAL_COARSE.crop_size, 2, False),
                                        ("coarse", OFFICIAL_COARSE.crop_size, CLASSES, False),
                                        ("fine", OFFICIAL_FINE.crop_size, CLASSES, True)),
             repeats=3, ct_shape=(300, 512, 512), stages={"coarse": OFFICIAL_COARSE, "fine": OFFICIAL_FINE},
             memory_window=(OFFICIAL_FINE.crop_size, CLASSES), demo_crop=None)
_SMALL = (32, 32, 32)
QUICK = Sizes(fixtures="smallest", calls=("logits_mc",), pipeline_fixture=False, plan=TINY_PLAN,
              windows=(("coarse", _SMALL, 2, False), ("coarse", _SMALL, CLASSES, False),
                       ("fine", _SMALL, CLASSES, True)),
              repeats=1, ct_shape=(40, 64, 64),
              stages={"coarse": StageConfig(TINY_PLAN, (3.0, 3.0, 6.0)),
                      "fine": StageConfig(TINY_PLAN, (2.0, 2.0, 2.0))},
              memory_window=(_SMALL, CLASSES), demo_crop=(64, 64, 64))
"""The quick check: one parity fixture at official width, the tiny test plan for everything random."""


def _size(shape) -> str:
    return "×".join(str(n) for n in shape)


def _gb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB"


def _row(section: str, what: str, value: str, goal: str = "", status: str = "info") -> dict:
    return {"section": LETTERS[section], "what": what, "goal": goal, "status": status, "value": value}


class Check:
    """The running check: device, sizes, results so far; prints each row as it comes and keeps the JSON current."""

    def __init__(self, device, sizes: Sizes, quick: bool, parity_dir, output: Path):
        import torch

        from .. import __version__
        from ..device import describe

        self.device, self.sizes, self.quick, self.parity_dir, self.output = device, sizes, quick, parity_dir, output
        self.cpu = device.type != "cuda"
        self.report = {"medals": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
                       "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                       "device": describe(device), "engine_precision": self._engine_precision(),
                       "quick": quick, "memory_simulated": self.cpu,
                       "sections": {}, "rows": []}
        self.window_memory = {}  # stage → (available, baseline, window) MB found in (b) at 24 classes, for (c)

    def _engine_precision(self) -> str:
        """What the engine's own autocast (`medals.device.autocast`) runs (b) to (e) in on this device."""
        from ..device import autocast

        dtype = getattr(autocast(self.device), "fast_dtype", None)  # None: no autocast
        return "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"

    @property
    def on_p5_device(self) -> bool:
        return any(name in self.report["device"]["name"] for name in P5_DEVICES)

    def add(self, row: dict) -> None:
        self.report["rows"].append(row)
        print(f"({row['section']}) {row['what']:<52} {row['goal']:<11} {row['status']:<6} {row['value']}", flush=True)

    def run(self, sections) -> bool:
        device = self.report["device"]
        print(f"medals bench gpu{' --quick' if self.quick else ''}: {device['name']} ({device['device']}), torch "
              f"{self.report['torch']}" + (f", CUDA {self.report['cuda']}" if not self.cpu else "") +
              f"; the engine runs in {self.report['engine_precision']}" +
              ("; CPU: memory is the process's peak RSS, the device's is simulated" if self.cpu else ""))
        print(f"    {'what':<52} {'goal':<11} {'status':<6} value")
        start = time.perf_counter()
        for section in sections:
            begun = time.perf_counter()
            count = len(self.report["rows"])
            try:
                data = getattr(self, section.replace("-", "_"))()
            except Exception as error:  # noqa: BLE001 — one broken part must not cost the others a (rare) GPU run
                data = {"error": f"{type(error).__name__}: {error}"}
                last_words = (str(error).strip().splitlines() or [""])[-1]
                self.add(_row(section, f"{section} check broke", f"{type(error).__name__}: {last_words}", "", "error"))
            self.report["sections"][section] = {"seconds": round(time.perf_counter() - begun, 1), "data": data,
                                                "rows": self.report["rows"][count:]}
            self.write()
        failed = [r for r in self.report["rows"] if r["status"] in ("FAIL", "error")]
        self.report["passed"], self.report["seconds"] = not failed, round(time.perf_counter() - start, 1)
        self.write()
        print(f"{'passed' if not failed else f'{len(failed)} row(s) failed'} in {self.report['seconds']:.0f} s; "
              f"wrote {self.output}")
        return not failed

    def write(self) -> None:
        self.output.write_text(json.dumps(self.report, indent=2) + "\n")

    def _spec(self, **values) -> dict:
        return {"device": str(self.device), **values}

    # (a)
    def parity(self) -> dict:
        from .parity import ParityFixtures

        try:
            folder = str(ParityFixtures.find(self.parity_dir).folder)
        except FileNotFoundError as error:
            self.add(_row("parity", "parity fixtures", str(error), "", "absent"))
            return {"absent": str(error)}
        data = in_child("medals.bench.gpu_parity:measure_parity",
                        self._spec(parity_dir=folder, fixtures=self.sizes.fixtures, calls=list(self.sizes.calls),
                                   pipeline=self.sizes.pipeline_fixture))
        groups = {}
        for row in data["rows"]:
            groups.setdefault((row["fixture"], row["precision"]), []).append(row)
        for (fixture, precision), rows in groups.items():
            logit = max((r["logit_diff"] for r in rows if r["logit_diff"] is not None), default=None)
            value = ("" if logit is None else f"|Δlogit| {logit:.1e}  ") + \
                f"|Δp| {max(r['probability_diff'] for r in rows):.1e}  (largest of {len(rows)})"
            if precision == "float32":
                goal, status = f"≤ {rows[0]['tolerance']:.0e}", "pass" if all(r["passed"] for r in rows) else "FAIL"
            else:
                goal, status = "report", "info"
            self.add(_row("parity", f"{fixture} {precision}", value, goal, status))
        return data

    # (b)
    def forward(self) -> dict:
        from .gpu_windows import largest_batch, simulated_memory_mb, window_cost_mb

        results = []
        for stage, crop, classes, prompted in self.sizes.windows:
            spec = self._spec(plan=self.sizes.plan.to_dict(), crop=list(crop), classes=classes, prompted=prompted)
            one = in_child("medals.bench.gpu_windows:measure_window",
                           {**spec, "batch": 1, "repeats": self.sizes.repeats})
            what = f"{stage} {_size(crop)} N={classes}{' prompted' if prompted else ''}"
            if "failed" in one:
                self.add(_row("forward", f"{what} batch 1", one["failed"], "", "FAIL"))
                continue
            window_mb = window_cost_mb(one["peak_mb"], one["baseline_mb"], crop)
            available = simulated_memory_mb(one["baseline_mb"], window_mb) if self.cpu else one["available_mb"]
            batch, best, refused = largest_batch(available, one["baseline_mb"], window_mb), one, []
            while batch > 1:
                best = in_child("medals.bench.gpu_windows:measure_window", {**spec, "batch": batch, "repeats": 1})
                if "failed" not in best:
                    break
                refused.append(best)
                batch, best = max(1, int(batch * BATCH_STEP_DOWN)), one
            results.append({"stage": stage, "crop": crop, "classes": classes, "prompted": prompted,
                            "batch_1": one, "largest": best, "refused": refused, "available_mb": available})
            if classes == CLASSES:
                self.window_memory[stage] = (available, one["baseline_mb"], window_mb)
            self.add(_row("forward", f"{what} batch 1", f"{one['seconds']:.3f} s/window, peak {_gb(one['peak_mb'])}"))
            tried = "".join(f"; batch {r['batch']}: {r['failed']}" for r in refused)
            self.add(_row("forward", f"{what} batch {batch} (largest)",
                          f"{best['seconds'] / batch:.3f} s/window, peak {_gb(best['peak_mb'])} of "
                          f"{_gb(available)} {'simulated' if self.cpu else 'free'}{tried}"))
        return {"windows": results}

    def _request_batch(self) -> int:
        """Windows per forward for (c): what fits in every stage with the window loop's probabilities beside the
        forward, by (b)'s figures (1 without them)."""
        from .gpu_windows import largest_batch, probabilities_mb

        return min((largest_batch(available, baseline, window + probabilities_mb(self.sizes.stages[stage].crop_size,
                                                                               CLASSES))
                    for stage, (available, baseline, window) in self.window_memory.items()), default=1)

    # (c)
    def two_stage(self) -> dict:
        batch, refused = self._request_batch(), []
        while True:
            data = in_child("medals.bench.gpu_pipeline:measure_two_stage",
                            self._spec(shape=list(self.sizes.ct_shape), spacing=list(CT_SPACING), classes=CLASSES,
                                       stages={name: config.to_dict() for name, config in self.sizes.stages.items()},
                                       window_batch=batch))
            if "failed" not in data or batch == 1:
                break
            refused.append({"batch": batch, **data})
            batch = max(1, batch // 2)
        data["refused"] = refused
        # A batch too large may end in the engine's OutOfMemory; anything else is a failure, as is the last try.
        broken = [r for r in refused if r["error"] != "OutOfMemory"] + \
            ([{"batch": batch, **data}] if "failed" in data else [])
        for failure in broken:
            self.add(_row("two-stage", f"{CLASSES} classes at window batch {failure['batch']}",
                          f"{failure['error']}: {failure['failed']}", "", "FAIL"))
        if "failed" in data:
            return data
        goal = f"≤ {P5_SECONDS:.0f} s"
        status = ("pass" if data["seconds"] <= P5_SECONDS else "missed") if self.on_p5_device else "info"
        stages = ", ".join(f"{name} {s['windows']} windows done at {s['done_at']:.1f} s"
                           for name, s in data["stages"].items())
        ct = f"{_size(self.sizes.ct_shape[::-1])} CT"
        after = f" (after {', '.join(str(r['batch']) for r in refused)} failed)" if refused else ""
        self.add(_row("two-stage", f"{CLASSES} classes, {ct}, window batch {batch}{after}",
                      f"{data['seconds']:.1f} s array to labels ({stages}; fine region {_size(data['fine_region'])}), "
                      f"peak {_gb(data['peak_mb'])}", goal + ("" if self.on_p5_device else " H100/H200"), status))
        return data

    # (d)
    def memory(self) -> dict:
        crop, classes = self.sizes.memory_window
        data = in_child("medals.bench.gpu_windows:measure_out_of_memory",
                        self._spec(plan=self.sizes.plan.to_dict(), crop=list(crop), classes=classes))
        simulated = f"simulated device of {_gb(data['available_mb'])}: " if data["simulated"] else ""
        self.add(_row("memory", f"{data['windows']} windows {_size(crop)} N={classes} in one batch",
                      f"{simulated}{data['error'] or 'no error'}: {data.get('message', 'the request fitted')}",
                      "OutOfMemory", "pass" if data["error"] == "OutOfMemory" else "FAIL"))
        self.add(_row("memory", "the next request after it",
                      f"held {data['held_before_mb']:.0f} MB before, {data['held_after_mb']:.0f} MB after; same "
                      f"probabilities as before it (max |Δ| {data['repeat_difference']:.1e})", "usable",
                      "pass" if data["passed"] else "FAIL"))
        return data

    # (e)
    def demo(self) -> dict:
        from .gpu_pipeline import NEAR_THRESHOLD

        crop = self.sizes.demo_crop
        data = in_child("medals.bench.gpu_pipeline:measure_demo", self._spec(crop=list(crop) if crop else None))
        where = f"central {_size(crop)} of the" if crop else "the"
        self.add(_row("demo", f"demo model, {where} sample, vs CPU float32",
                      f"{data['differing_voxels']} of {data['labelled_voxels']} labelled voxels differ, "
                      f"{data['unexcused_voxels']} beyond {NEAR_THRESHOLD:.0e} of the threshold; max |Δp| "
                      f"{data['max_probability_diff']:.1e}; CPU {data['cpu_seconds']:.1f} s, device "
                      f"{data['device_seconds']:.1f} s", "same labels", "pass" if data["passed"] else "FAIL"))
        return data


def run_gpu_check(args) -> int:
    from ..device import pick_device
    from ..errors import InputError

    device = pick_device(args.device)
    if device.type != "cuda" and not args.quick:
        raise InputError("medals bench gpu checks a CUDA device; on the CPU run it with --quick (the official sizes "
                         "would take hours and over 12 GB there)")
    check = Check(device, QUICK if args.quick else FULL, args.quick, args.parity_dir, Path(args.output))
    return 0 if check.run(args.only or SECTIONS) else 1


def register(kinds) -> None:
    """Add `gpu` to the `medals bench` subcommands."""
    gpu = kinds.add_parser("gpu", help="GPU readiness: parity under autocast, window time and memory, a 24-class "
                                       "request, the out-of-memory path, the demo model against the CPU",
                           description=__doc__.split("\n\n")[0])
    gpu.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    gpu.add_argument("--quick", action="store_true", help="the same checks at small sizes (minutes on a CPU)")
    gpu.add_argument("--parity-dir", help="parity fixture folder (default: $MEDALS_PARITY_DIR, else the source "
                                          "checkout's Testing/Data/parity)")
    gpu.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these parts (default: all)")
    gpu.add_argument("-o", "--output", default="gpu-check.json", help="JSON report (default %(default)s)")
    gpu.set_defaults(func=run_gpu_check)
