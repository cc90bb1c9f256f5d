"""The bf16 precision option on the CPU: names and autocast, the reduced-precision network paths against float32,
the official parity fixtures, `medals bench forward`, the flag on `medals segment` and the engine, and agreement
with float32 on the demo sample and on a real head CT (Debian invesalius-examples)."""
from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import parity_cases
from medals.cli import main
from medals.demo import DEMO_MODEL, PROMPTS, SAMPLES
from medals.device import autocast, autocast_dtype, check_precision
from medals.errors import InputError
from medals.intensity import to_model_range
from medals.io import read_volume
from medals.metrics import dice
from medals.modeling.medals_net import _average_pool
from medals.modeling.unet import _instance_norm_lrelu_
from medals.pipeline import Prompt, SegmentOptions, segment
from medals.server.engine import Engine
from medals.weights import load_model
from medals.weights.testing import make_tiny_model
from test_network_parity import tensors

CPU = torch.device("cpu")
PREPARE_DEMO_DATA = Path(__file__).resolve().parents[2] / "scripts" / "prepare_demo_data.py"


def channels_last(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 3 + 1).contiguous(memory_format=torch.channels_last_3d)


def test_precision_names_and_their_autocast():
    assert check_precision(None, CPU) == "auto" and check_precision("bf16", CPU) == "bf16"
    with pytest.raises(InputError, match="fp16"):
        check_precision("fp16", CPU)
    assert autocast_dtype(CPU, "auto") is None and autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16
    with autocast(CPU, "bf16"):
        assert F.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16


@pytest.mark.parametrize("batch", [1, 2])
@torch.no_grad()
def test_bf16_instance_norm_matches_float32_and_keeps_the_layout(batch):
    norm = torch.nn.InstanceNorm3d(16, affine=True)
    norm.weight.data.uniform_(0.5, 1.5), norm.bias.data.normal_()
    x = channels_last(batch, 16, 32, 24, 16)
    expected = _instance_norm_lrelu_(x.clone(), norm)
    reduced = _instance_norm_lrelu_(x.bfloat16(), norm)
    assert reduced.dtype == torch.bfloat16 and reduced.is_contiguous(memory_format=torch.channels_last_3d)
    assert float((reduced.float() - expected).abs().max()) <= 0.05  # bf16 keeps 8 bits: ~0.4 % of |x| ≲ 4


@torch.no_grad()
def test_bf16_instance_norm_costs_about_what_float32_does():
    """Reproduces the defect of mixing bf16 activations with float32 statistics in place (ATen's mixed-dtype
    path): ~20× slower than float32. Ratio of the best of three within this run."""
    norm = torch.nn.InstanceNorm3d(64, affine=True)
    x = channels_last(1, 64, 64, 64, 32)

    def best_seconds(tensor):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            _instance_norm_lrelu_(tensor.clone(), norm)
            times.append(time.perf_counter() - start)
        return min(times)

    assert best_seconds(x.bfloat16()) <= 3 * best_seconds(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_token_pooling_equals_avg_pool3d(dtype):
    x = channels_last(2, 8, 64, 32, 32).to(dtype)
    for kernel in (2, 8, 32):
        pooled = _average_pool(x, kernel)
        expected = F.avg_pool3d(x.float().contiguous(), kernel)
        assert pooled.shape == expected.shape and pooled.dtype == torch.float32
        assert float((pooled - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", parity_cases("net_", holding="logits_mc"))
@torch.no_grad()
def test_bf16_logits_against_the_official_parity_fixtures(parity_fixtures, name):
    """Outside the parity tolerance (1e-3, hence off by default), but the thresholded masks agree on ≥ 99 % of
    voxels and the mean logit error stays under 10 % of the logits' spread (random weights: 12 convolutions of
    rounding, the worst case; measured 2–7 %)."""
    meta, arrays = parity_fixtures.load(name)
    net = parity_fixtures.network(meta)
    queries, image, sc, mc = tensors(arrays, "queries", "image", "sc", "mc")
    with autocast(CPU, "bf16"):
        logits = net(queries, image, sc, mc).float()
    expected = torch.from_numpy(np.asarray(arrays["logits_mc"])).float()
    assert float(((logits > 0) == (expected > 0)).float().mean()) >= 0.99
    assert float((logits - expected).abs().mean()) <= 0.1 * float(expected.std())


def test_bench_forward_reports_each_precision_and_ends_with_the_fastest(capsys):
    assert main(["bench", "forward", "--crop", "32", "32", "32", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith(("fp32 ", "bf16 "))}
    assert set(rows) == {"fp32", "bf16"} and rows["fp32"][2] == "1.00x"
    assert all(float(seconds) > 0 and float(peak_mb) > 0 for seconds, peak_mb, _ in rows.values())
    assert any(line.startswith("official code") and "81.5 s" in line for line in lines)
    assert re.fullmatch(r"fastest: (fp32|bf16) \d+\.\d\dx", lines[-1])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def test_segment_and_the_engine_take_the_precision(tiny_folder):
    model = load_model(tiny_folder)
    image = np.random.default_rng(0).integers(0, 255, (12, 40, 40)).astype(np.float32)
    result = segment(model, image, (2.0, 1.5, 1.5), [Prompt("liver", 1)], device="cpu", precision="bf16")
    assert result.labels.shape == image.shape
    with pytest.raises(InputError, match="precision"):
        segment(model, image, (2.0, 1.5, 1.5), [Prompt("liver", 1)], device="cpu", precision="half")
    assert Engine.load(str(tiny_folder), ["cpu"], precision="bf16").precision == "bf16"


def test_precision_with_a_server_is_a_one_line_error(tmp_path, capsys):
    code = main(["segment", str(SAMPLES / "mni152_t1.nii.gz"), "-p", "brain", "-o", str(tmp_path / "x.nii.gz"),
                 "--server", "http://127.0.0.1:9", "--precision", "bf16", "-q"])
    assert code != 0 and "medals serve --precision" in capsys.readouterr().err


def segment_labels(arguments, output: Path, precision: str) -> np.ndarray:
    """The label map of `medals segment ARGUMENTS --precision P` with the demo model."""
    assert main(["segment", *arguments, "--model", str(DEMO_MODEL), "--device", "cpu", "-q", "--precision",
                 precision, "-o", str(output)]) == 0
    return read_volume(output).array


@pytest.mark.slow  # two demo-model segmentations, about a minute on two cores
def test_bf16_labels_agree_with_float32_on_the_demo_sample(tmp_path):
    """Dice ≥ 0.99 per structure between `--precision bf16` and `fp32` on the bundled MNI152 T1."""
    arguments = [str(SAMPLES / "mni152_t1.nii.gz"), *[a for p in PROMPTS for a in ("-p", p.text)]]
    labels = {p: segment_labels(arguments, tmp_path / f"{p}.nii.gz", p) for p in ("fp32", "bf16")}
    for prompt in PROMPTS:
        assert dice(labels["fp32"] == prompt.label, labels["bf16"] == prompt.label) >= 0.99, prompt.text


@pytest.mark.slow
def test_bf16_masks_agree_with_float32_on_a_real_head_ct():
    """The InVesalius head CT (Debian invesalius-examples, HU), prompts head and bone: each structure's own mask
    (probability > 0.5; the head contains the bone, so the label map shows only one of them there) agrees with
    float32's with Dice ≥ 0.98."""
    spec = importlib.util.spec_from_file_location("prepare_demo_data", PREPARE_DEMO_DATA)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    hu, spacing = recipe.read_invesalius_ct()
    model = load_model(DEMO_MODEL, CPU)
    prompts = [Prompt("head", 1), Prompt("bone", 2)]
    image = to_model_range(hu.astype(np.float32), "ct")
    # Identity direction, as the training set stored this CT.
    probabilities = {p: segment(model, image, spacing, prompts, direction=np.eye(3), modality="ct", device=CPU,
                                options=SegmentOptions(probabilities=True), precision=p).probabilities
                     for p in ("fp32", "bf16")}
    for prompt in prompts:
        masks = [probabilities[p][prompt.label] > 0.5 for p in ("fp32", "bf16")]
        assert masks[0].sum() > 1000, prompt.text
        assert dice(*masks) >= 0.98, prompt.text
