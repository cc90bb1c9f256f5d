"""Parity fixture sets: the stage models a pipeline case was recorded with, and a second, derived fixture set.

The recorded set (Testing/Data/parity) comes from the official code, whose generator needs the official
repository. `derive_fixture_set` writes another set in the same layout with other weight seeds, prompts, label
values, shapes, spacings and crops: its inputs are new and its expected outputs are recomputed by this engine
(so it checks that the parity tests take every constant from the fixture files, not the engine's faithfulness,
which the recorded set checks). The weight rule (weights.py), the key manifests and the tiny MPNet are copied
from the recorded set.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medals.bench.parity import ParityFixtures, first_half_blocks, pipeline_stages
from medals.config import MODALITIES, NetConfig, StageConfig, TextConfig
from medals.io import kji_spacing_to_npz
from medals.modeling import MedalSNet
from medals.pipeline.axes import to_network_order, volume_to_array, volume_to_network
from medals.pipeline.labels import assemble_labels, remove_small_components
from medals.pipeline.resample import resample_labels, resample_probability
from medals.pipeline.roi import box_slices, minimum_half_range, roi_box
from medals.pipeline.sliding_window import Execution, stage_probabilities
from medals.pipeline.stage import StageModel, plan_stage, prepare_image, prepare_prompt
from medals.pipeline.zoom import repair_spacing
from medals.text import TextEncoder, load_official_state
from medals.text.tokenizer import official_token_ids
from medals.text.towers import load_tower_tokenizer

SHARED_FILES = ("weights.py", "medals_net_keys.json", "text_encoder_keys.json", "tiny_mpnet")

DERIVED_NETS = {
    "net_32x64x96": {"image_size": [32, 64, 96], "weights_seed": 5, "input_seed": 7, "n_queries": 2},
    "net_64x32x64": {"image_size": [64, 32, 64], "weights_seed": 6, "input_seed": 8, "n_queries": 4,
                     "points": 300, "full_outputs": False},
}
DERIVED_TEXT = {"weights_seed": 4,
                "prompts": ["Spleen", "right kidneys in contrast-enhanced CT", "brain tumour (FLAIR)",
                            "pancreas pancreas pancreas", "Hepatic nodules"]}
DERIVED_PIPELINE = {
    "name": "pipeline_derived",
    "case": {"shape": [24, 64, 56], "spacing": [1.2, 1.2, 4.0], "noise_seed": 3,
             "ellipsoids": [[[12, 28, 22], [7, 14, 12], 160], [[10, 40, 36], [5, 8, 7], 210]]},
    "prompts": {"7": "kidney in CT", "3": "liver in CT"},
    "modality": "ct",
    "text_seed": 2,
    "stage_seeds": [4, 5],
    "stages": {"stage1": {"crop": [64, 32, 32], "spacing": [3.0, 3.0, 6.0]},
               "stage2": {"crop": [32, 32, 64], "spacing": [2.0, 2.0, 2.0]}},
    # β picked by trying a few, as for the recorded case: both labels in both stages, the ROI a proper sub-box.
    "logit_bias": {"channel": 63, "pre_gelu": -1.0, "beta": [34.0, 45.0]},
}


def text_encoder(folder: Path, state_dict, seed: int) -> TextEncoder:
    """The tiny MPNet text encoder with the weight rule's tensors at `seed`."""
    encoder = TextEncoder(TextConfig(), folder / "tiny_mpnet")
    load_official_state(encoder, state_dict("text_encoder_keys.json", seed))
    return encoder


def window_list(plan) -> list[list[int]]:
    """A plan's windows as the fixtures list them: [h0, h1, w0, w1, d0, d1]."""
    return [[bound for s in window for bound in (s.start, s.stop)] for window in plan.windows]


def ellipsoids(shape, specs) -> np.ndarray:
    """A float volume of `shape` holding value v inside each ellipsoid (centre, radii, v), later ones on top."""
    grid = np.indices(shape, dtype=np.float64)
    volume = np.zeros(shape)
    for centre, radii, value in specs:
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
        volume[inside] = value
    return volume


def net_inputs(image_size, n_queries: int, seed: int) -> dict[str, np.ndarray]:
    """Smoothed-noise image (0–255), one ellipsoid mask per query, their union and standard-normal queries."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random(image_size), 1.0)
    image = np.round(255 * (image - image.min()) / (image.max() - image.min()))
    size = np.asarray(image_size)
    mc = np.stack([ellipsoids(image_size, [(rng.uniform(0.3, 0.7, 3) * size, rng.uniform(0.15, 0.3, 3) * size, 1)])
                   for _ in range(n_queries)])[None].astype(np.uint8)
    return {"image": image[None, None].astype(np.uint8), "mc": mc, "sc": mc.max(1, keepdims=True),
            "queries": rng.standard_normal((n_queries, 768)).astype(np.float32)}


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std over all voxels (float64), as the fixtures store them."""
    flat = x[0].flatten(1).double()
    return flat.mean(1), flat.std(1, correction=0)


@torch.no_grad()
def derive_net_case(folder: Path, state_dict, name: str, spec: dict) -> None:
    """A network fixture: full outputs and intermediates, or (full_outputs False) the full-size fixture's
    subsampled logits, sample points and per-query statistics."""
    meta = {"name": name, "image_size": spec["image_size"], "weights_seed": spec["weights_seed"],
            "input_seed": spec["input_seed"], "n_queries": spec["n_queries"]}
    net = MedalSNet(NetConfig(crop_size=tuple(spec["image_size"]))).eval()
    net.load_state_dict(state_dict("medals_net_keys.json", spec["weights_seed"]), strict=True)
    arrays = net_inputs(spec["image_size"], spec["n_queries"], spec["input_seed"])
    queries, image, sc, mc = (torch.from_numpy(arrays[n]).float() for n in ("queries", "image", "sc", "mc"))
    skips = net.encode(image, sc)
    memory = net.image_tokens(skips)
    decoded = net.decode_queries(queries, memory)
    embeddings = net.mask_embed_proj(decoded)
    full_res = net.backbone.decoder(list(skips))[0]
    fusion = net.pixel_features(full_res, embeddings, mc)
    logits = net.logits(embeddings, fusion)
    arrays.update(memory=memory.numpy(), pos_embedding=net.pos_embedding.numpy(), mask_embed=embeddings.numpy())
    if spec.get("full_outputs", True):
        arrays.update(logits_mc=logits.numpy(), logits_sc=net(queries, image, sc, None).numpy(),
                      logits_none=net(queries, image, None, None).numpy(),
                      logits_zero_prompts=net(queries, image, 0 * sc, 0 * mc).numpy(),
                      decoder_queries=decoded.transpose(0, 1).numpy())
        for label, features in [*((f"skip{i}", skip) for i, skip in enumerate(skips)),
                                ("decoder_out0", full_res), ("fusion_out", fusion)]:
            mean, std = channel_stats(features)
            arrays[f"{label}_mean"], arrays[f"{label}_std"] = mean.float().numpy(), std.float().numpy()
    else:
        points = np.random.default_rng(spec["input_seed"]).integers(0, spec["image_size"], (spec["points"], 3))
        flat = logits[0].flatten(1).double()
        h, w, d = points.T
        arrays.update(logits_mc_sub4=logits[:, :, ::4, ::4, ::4].numpy(), point_index=points.astype(np.int32),
                      point_logits=logits[0][:, h, w, d].numpy(), query_mean=flat.mean(1).numpy(),
                      query_std=flat.std(1, correction=0).numpy(), query_min=flat.min(1).values.float().numpy(),
                      query_max=flat.max(1).values.float().numpy())
    write_case(folder, name, meta, arrays)


@torch.no_grad()
def derive_text_case(folder: Path, state_dict, spec: dict) -> None:
    """The text fixture: official tokenization and queries of `spec`'s prompts for every modality code."""
    prompts = spec["prompts"]
    tokenizer = load_tower_tokenizer(folder / "tiny_mpnet")
    encoder = text_encoder(folder, state_dict, spec["weights_seed"])
    input_ids, attention_mask = official_token_ids(tokenizer, prompts, max_length=256)
    meta = {"prompts": prompts, "weights_seed": spec["weights_seed"],
            "tokens": [["[CLS]", *tokenizer.tokenize(prompt), "[SEP]"] for prompt in prompts],
            "single_prompt_ids": [official_token_ids(tokenizer, [prompt])[0][0].tolist() for prompt in prompts],
            "modality_codes": {name: code for code, name in enumerate(MODALITIES)}}
    arrays = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
              "text_features": encoder.text_tower(prompts).numpy(),
              "queries": np.stack([encoder(prompts, torch.tensor([code])).numpy() for code in range(len(MODALITIES))]),
              "queries_single": np.stack([np.concatenate([encoder.encode([p], m).numpy() for p in prompts])
                                          for m in MODALITIES])}
    write_case(folder, "text", meta, arrays)


def pipeline_image(case: dict) -> np.ndarray:
    """A (D, H, W) uint8 body cylinder (90) holding the case's ellipsoids, with noise σ=8 and blur σ=0.8."""
    shape = case["shape"]
    _, j, i = np.indices(shape)
    body = ((j - shape[1] / 2) / (0.45 * shape[1])) ** 2 + ((i - shape[2] / 2) / (0.45 * shape[2])) ** 2 <= 1
    volume = np.where(body, 90.0, 0.0)
    organs = ellipsoids(shape, case["ellipsoids"])
    volume[organs > 0] = organs[organs > 0]
    volume += body * np.random.default_rng(case["noise_seed"]).normal(0, 8, shape)
    return np.clip(np.round(ndimage.gaussian_filter(volume, 0.8)), 0, 255).astype(np.uint8)


def hwd(volume: np.ndarray) -> torch.Tensor:
    return volume_to_network(torch.from_numpy(volume))


def kji(volume: torch.Tensor) -> np.ndarray:
    return volume_to_array(volume).numpy()


@torch.no_grad()
def derive_pipeline_case(folder: Path, state_dict, spec: dict) -> None:
    """The two-stage pipeline fixture: every intermediate of the official `main()`, step by step."""
    meta = {key: value for key, value in spec.items() if key != "name"}
    label_values = tuple(int(value) for value in spec["prompts"])
    stages = pipeline_stages(meta, state_dict)
    queries = text_encoder(folder, state_dict, spec["text_seed"]).encode(list(spec["prompts"].values()),
                                                                          spec["modality"])
    imgs = pipeline_image(spec["case"])
    h, w, d = spec["case"]["spacing"]
    spacing = repair_spacing(imgs.shape, (d, h, w))
    coarse = plan_stage(to_network_order(imgs.shape), to_network_order(spacing), stages["coarse"].config,
                        len(label_values))
    s1_image = prepare_image(hwd(imgs), coarse)
    s1_prob = stage_probabilities(stages["coarse"].net, queries, s1_image, coarse.windows, label_values)
    labels, _ = assemble_labels(s1_prob, label_values)
    s1_labels = kji(resample_labels(labels[coarse.unpadded], coarse.input_shape))
    s1_clean = remove_small_components(s1_labels)
    box = roi_box(s1_clean > 0, minimum_half_range(imgs.shape, spacing, stages["fine"].config, len(label_values)))
    index = box_slices(box)
    fine = plan_stage(to_network_order(imgs[index].shape), to_network_order(spacing), stages["fine"].config,
                      len(label_values))
    s2_image = prepare_image(hwd(imgs[index]), fine)
    s2_prompt = prepare_prompt(hwd(s1_clean[index]), fine)
    s2_prob = stage_probabilities(stages["fine"].net, queries, s2_image, fine.windows, label_values, s2_prompt,
                                  execution=Execution(block_permutation=first_half_blocks))
    labels, confidence = assemble_labels(s2_prob, label_values)
    s2_labels = kji(resample_labels(labels[fine.unpadded], fine.input_shape))
    s2_max_prob = kji(resample_probability(confidence[fine.unpadded], fine.input_shape))
    final = np.zeros_like(s1_labels)
    final[index] = s2_labels
    repaired = kji_spacing_to_npz(spacing)
    meta.update(repaired_spacing=list(repaired), roi_spacing_dhw=list(spacing),
                stage1=plan_record(coarse, s1_labels, label_values), stage2=plan_record(fine, s2_labels, label_values))
    arrays = {"imgs": imgs, "spacing": np.array(spec["case"]["spacing"]),
              "repaired_spacing": np.asarray(repaired, np.float32), "queries": queries.numpy(),
              "s1_image": s1_image.numpy(), "s1_prob": s1_prob.numpy(), "s1_labels": s1_labels,
              "s1_labels_clean": s1_clean, "roi_box": np.asarray(box, np.int32), "s2_image": s2_image.numpy(),
              "s2_prompt": s2_prompt.numpy(), "s2_prob": s2_prob.numpy(), "s2_labels": s2_labels,
              "s2_max_prob": s2_max_prob, "final_before_postprocess": final}
    write_case(folder, spec["name"], meta, arrays)


def plan_record(plan, labels: np.ndarray, label_values) -> dict:
    """A stage's entry in the pipeline fixture's metadata: zoom, padded working shape, windows, label counts."""
    return {"pseudo_spacing": list(plan.zoom.spacing), "target_spacing": list(plan.zoom.target),
            "working_shape_padded": list(plan.padded_shape), "windows": window_list(plan),
            "label_counts": {str(v): int((labels == v).sum()) for v in (0, *label_values)}}


def write_case(folder: Path, name: str, meta: dict, arrays: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=1))
    np.savez_compressed(folder / f"{name}.npz", **arrays)


def derive_fixture_set(recorded: Path, folder: Path) -> Path:
    """Write the derived fixture set into `folder` (created); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHARED_FILES:
        copy = shutil.copytree if (recorded / name).is_dir() else shutil.copy
        copy(recorded / name, folder / name)
    state_dict = ParityFixtures(folder).state_dict
    for name, spec in DERIVED_NETS.items():
        derive_net_case(folder, state_dict, name, spec)
    derive_text_case(folder, state_dict, DERIVED_TEXT)
    derive_pipeline_case(folder, state_dict, DERIVED_PIPELINE)
    return folder
