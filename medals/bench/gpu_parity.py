"""`medals bench gpu` (a): the parity fixtures on the chosen device, in float32 and under autocast.

"float32" is strict float32 (TF32 off) and must pass the parity tests' tolerances; "tf32" (CUDA only: PyTorch's
default for cuDNN convolutions), "fp16" and "bf16" autocast report their largest logit and probability
differences from the official float32 outputs. On a CPU only what the engine can run there is compared: float32,
and bf16 where the CPU computes it (fp16 has no fast CPU kernels: minutes for the smallest fixture on an AMD
EPYC). Network fixtures compare logits; pipeline cases compare the coarse and fine stages' probabilities, each
stage given the official input of that stage.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..device import cpu_computes_bf16
from .parity import LOGITS_TOL, PROBABILITY_TOL, ParityFixtures, first_half_blocks, label_values

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
NETWORK_CALLS = ("logits_mc", "logits_sc", "logits_none", "logits_zero_prompts")
"""The official call forms: fused prompt, union only, no prompt, all-zero prompts (what the coarse stage runs)."""


def precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions worth comparing on `device`: on CUDA float32, tf32, fp16 and bf16 where the GPU has it; on a
    CPU the engine's own, float32 and bf16 where the CPU computes it."""
    if device.type == "cuda":
        return ("float32", "tf32", "fp16") + (("bf16",) if torch.cuda.is_bf16_supported() else ())
    return ("float32",) + (("bf16",) if cpu_computes_bf16() else ())


@contextlib.contextmanager
def precision(device: torch.device, name: str):
    """Run the enclosed work in `name` precision, overriding the engine's own autocast."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = name == "tf32"
    try:
        with torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(name, torch.bfloat16),
                            enabled=name in AUTOCAST_DTYPES):
            yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


class InPrecision(torch.nn.Module):
    """A network whose every forward runs in one precision (for the pipeline's window loop)."""

    def __init__(self, net, device: torch.device, name: str):
        super().__init__()
        self.net, self.device, self.precision = net, device, name

    def forward(self, *inputs):
        with precision(self.device, self.precision):
            return self.net(*inputs)


def _differences(actual: torch.Tensor, expected, *, logits: bool) -> dict:
    actual = actual.float().cpu()
    expected = torch.as_tensor(expected).float()
    if not logits:
        return {"logit_diff": None, "probability_diff": float((actual - expected).abs().max())}
    return {"logit_diff": float((actual - expected).abs().max()),
            "probability_diff": float((torch.sigmoid(actual) - torch.sigmoid(expected)).abs().max())}


def _network_outputs(name: str, arrays, net, device, calls) -> dict:
    """Logits of each call form, or for a full-size case (which stores subsamples) those of the fused-prompt
    call."""
    queries, image, sc, mc = (torch.from_numpy(arrays[k]).float().to(device)
                              for k in ("queries", "image", "sc", "mc"))
    if "logits_mc_sub4" in arrays.files:
        logits = net(queries, image, sc, mc)
        h, w, d = torch.from_numpy(arrays["point_index"]).long().T
        return {"logits_mc_sub4": logits[:, :, ::4, ::4, ::4], "point_logits": logits[0][:, h, w, d]}
    prompts = {"logits_mc": (sc, mc), "logits_sc": (sc, None), "logits_none": (None, None),
               "logits_zero_prompts": (0 * sc, 0 * mc)}
    return {call: net(queries, image, *prompts[call]) for call in calls}


def _pipeline_probabilities(stages: dict, meta: dict, arrays, device, name: str) -> dict:
    """Coarse and fine probabilities of a pipeline case, each stage on its official working image."""
    from ..pipeline.sliding_window import Execution, stage_probabilities
    from ..pipeline.windows import sliding_windows

    queries = torch.from_numpy(arrays["queries"])
    outputs = {}
    for stage, key, blocks in (("coarse", "s1", None), ("fine", "s2", first_half_blocks)):
        image = torch.from_numpy(arrays[f"{key}_image"])
        prompt = torch.from_numpy(arrays["s2_prompt"]) if stage == "fine" else None
        windows = sliding_windows(image.shape, stages[stage].config.crop_size)
        execution = Execution(device, block_permutation=blocks) if blocks else Execution(device)
        net = InPrecision(stages[stage].net.to(device), device, name)
        outputs[f"{key}_prob"] = stage_probabilities(net, queries, image, windows, label_values(meta), prompt,
                                                     execution=execution, stage=stage)
    return outputs


def measure_parity(spec: dict) -> dict:
    """Child: one row per fixture, output and precision with its largest differences; float32 rows carry the
    tests' tolerance and whether they pass it."""
    device = torch.device(spec["device"])
    fixtures = ParityFixtures.find(spec["parity_dir"])
    rows = []

    def add(fixture, output, name, actual, expected, logits=True):
        row = {"fixture": fixture, "output": output, "precision": name, **_differences(actual, expected, logits=logits)}
        if name == "float32":
            row["tolerance"] = LOGITS_TOL if logits else PROBABILITY_TOL
            row["passed"] = (row["logit_diff"] if logits else row["probability_diff"]) <= row["tolerance"]
        rows.append(row)

    names = fixtures.cases("net_", holding="queries")
    if spec["fixtures"] == "smallest":
        names = [min(names, key=lambda name: math.prod(fixtures.load(name)[0]["image_size"]))]
    for fixture in names:
        meta, arrays = fixtures.load(fixture)
        net = fixtures.network(meta).to(device)
        for name in precisions(device):
            with torch.no_grad(), precision(device, name):
                outputs = _network_outputs(fixture, arrays, net, device, spec["calls"])
            for output, actual in outputs.items():
                add(fixture, output, name, actual, arrays[output])
        del net
    if spec["pipeline"]:
        for case in fixtures.cases("pipeline_", holding="final_before_postprocess"):
            meta, arrays = fixtures.load(case)
            stages = fixtures.pipeline_stages(meta)
            for name in precisions(device):
                for output, actual in _pipeline_probabilities(stages, meta, arrays, device, name).items():
                    add(case, output, name, actual, arrays[output], logits=False)
    return {"folder": str(fixtures.folder), "rows": rows}
