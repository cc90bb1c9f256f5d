"""`medals evaluate` through `medals.cli.main`: pairing, grid checks, CSV contents, spacing, instance mode."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from medals.cli import main
from medals.io import Volume, kji_spacing_to_npz, write_labels
from medals.metrics import normalized_surface_dice

SPACING = (2.0, 1.0, 1.0)


def image_grid(shape, spacing=SPACING, origin=(0.0, 0.0, 0.0)) -> Volume:
    """A blank image on the grid the label maps are written on."""
    return Volume(np.zeros(shape, np.int16), spacing, origin)


def two_organs() -> np.ndarray:
    labels = np.zeros((8, 12, 12), np.uint8)
    labels[1:5, 2:8, 2:8] = 1
    labels[5:7, 8:11, 8:11] = 2
    return labels


def write(array, path, **grid):
    write_labels(array, image_grid(array.shape, **grid), path)
    return path


def read_csv(path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_single_pair_writes_one_row_per_label(tmp_path, capsys):
    gt = two_organs()
    pred = gt.copy()
    pred[pred == 2] = 0
    code = main(["evaluate", str(write(pred, tmp_path / "p.nii.gz")), str(write(gt, tmp_path / "g.nrrd")),
                 "--labels", "1=liver", "2=spleen", "-o", str(tmp_path / "m.csv")])
    assert code == 0
    rows = read_csv(tmp_path / "m.csv")
    assert [(r["case"], r["label"], r["name"]) for r in rows] == [("g", "1", "liver"), ("g", "2", "spleen")]
    assert float(rows[0]["dsc"]) == 1.0 and float(rows[0]["nsd"]) == 1.0
    assert float(rows[1]["dsc"]) == 0.0 and float(rows[1]["nsd"]) == 0.0
    out = capsys.readouterr().out
    assert "liver" in out and "DSC 0.5000" in out


def test_folders_are_paired_by_case_name_across_formats(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    for name in ("a", "b"):
        write(two_organs(), tmp_path / "gt" / f"{name}.nii.gz")
        write(two_organs(), tmp_path / "pred" / f"{name}.mha")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(tmp_path / "m.csv")]) == 0
    rows = read_csv(tmp_path / "m.csv")
    assert sorted({r["case"] for r in rows}) == ["a", "b"] and len(rows) == 4  # labels found in the GT


def test_missing_prediction_is_named(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    write(two_organs(), tmp_path / "gt" / "case7.nrrd")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(tmp_path / "m.csv")]) == 2
    assert "case7" in capsys.readouterr().err


def test_different_grids_are_refused(tmp_path, capsys):
    pred = write(two_organs(), tmp_path / "p.nrrd", spacing=(3.0, 1.0, 1.0))
    gt = write(two_organs(), tmp_path / "g.nrrd")
    assert main(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "geometry differs" in err and "(3.0, 1.0, 1.0)" in err
    assert not (tmp_path / "m.csv").exists()


def test_different_shapes_are_refused(tmp_path, capsys):
    pred = write(two_organs()[:-1], tmp_path / "p.nrrd")
    gt = write(two_organs(), tmp_path / "g.nrrd")
    assert main(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "m.csv")]) == 2
    assert "shape" in capsys.readouterr().err


def test_challenge_npz_uses_gts_segs_and_prompt_names(tmp_path):
    gt = two_organs().astype(np.int16)
    prompts = np.array({"1": "liver in CT", "2": "spleen in CT", "instance_label": 0}, dtype=object)
    np.savez_compressed(tmp_path / "gt.npz", gts=gt, spacing=np.array([1.0, 1.0, 2.0]))
    np.savez_compressed(tmp_path / "pred.npz", segs=gt, spacing=np.array([1.0, 1.0, 2.0]), text_prompts=prompts)
    assert main(["evaluate", str(tmp_path / "pred.npz"), str(tmp_path / "gt.npz"), "-o", str(tmp_path / "m.csv")]) == 0
    rows = read_csv(tmp_path / "m.csv")
    assert [r["name"] for r in rows] == ["liver in CT", "spleen in CT"]
    assert all(float(r["nsd"]) == 1.0 for r in rows)


def test_instance_mode_scores_components(tmp_path, capsys):
    gt = np.zeros((4, 10, 30), np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 2:6, 12:16] = 2
    pred = (gt == 1).astype(np.uint8)  # finds one of the two instances
    pred[:, 2:6, 22:26] = 1           # and one false positive
    code = main(["evaluate", str(write(pred, tmp_path / "p.nrrd")), str(write(gt, tmp_path / "g.nrrd")),
                 "--instance", "-o", str(tmp_path / "i.csv")])
    assert code == 0
    (row,) = read_csv(tmp_path / "i.csv")
    assert (row["tp"], row["fp"], row["fn"]) == ("1", "1", "1")
    assert float(row["f1"]) == pytest.approx(0.5) and float(row["dsc_tp"]) == 1.0
    assert "F1 0.5000" in capsys.readouterr().out


def test_bad_label_argument(tmp_path, capsys):
    gt = write(two_organs(), tmp_path / "g.nrrd")
    assert main(["evaluate", str(gt), str(gt), "--labels", "liver", "-o", str(tmp_path / "m.csv")]) == 2
    assert "--labels" in capsys.readouterr().err


def test_nifti_keeps_its_header_spacing_as_npz_physical_does(tmp_path):
    # One anisotropic case as NIfTI (spacing from the header) and as challenge npz: the NIfTI scores equal the
    # npz's under --npz-spacing physical, and the official order (stored spacing on the array axes) differs.
    gt = two_organs()
    pred = np.roll(gt, 2, axis=0)
    spacing_kji = (3.0, 0.5, 0.8)
    write(pred, tmp_path / "p.nii.gz", spacing=spacing_kji)
    write(gt, tmp_path / "g.nii.gz", spacing=spacing_kji)
    prompts = np.array({"1": "liver", "2": "spleen", "instance_label": 0}, dtype=object)
    stored = np.array(kji_spacing_to_npz(spacing_kji))
    np.savez_compressed(tmp_path / "g.npz", gts=gt, spacing=stored, text_prompts=prompts)
    np.savez_compressed(tmp_path / "p.npz", segs=pred)

    def nsd(pred_path, gt_path, *options):
        assert main(["evaluate", str(pred_path), str(gt_path), "-o", str(tmp_path / "m.csv"), *options]) == 0
        return [float(row["nsd"]) for row in read_csv(tmp_path / "m.csv")]

    from_header = nsd(tmp_path / "p.nii.gz", tmp_path / "g.nii.gz")
    assert from_header == nsd(tmp_path / "p.npz", tmp_path / "g.npz", "--npz-spacing", "physical")
    assert from_header != nsd(tmp_path / "p.npz", tmp_path / "g.npz")
    assert from_header == pytest.approx([normalized_surface_dice(gt == v, pred == v, spacing_kji) for v in (1, 2)],
                                        abs=1e-8)


def test_a_folder_survives_one_unreadable_case(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    for name in ("good", "bad"):
        write(two_organs(), tmp_path / "gt" / f"{name}.nrrd")
    write(two_organs(), tmp_path / "pred" / "good.nrrd")
    write(two_organs()[:-1], tmp_path / "pred" / "bad.nrrd")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(tmp_path / "m.csv")]) == 2
    assert {row["case"] for row in read_csv(tmp_path / "m.csv")} == {"good"}
    err = capsys.readouterr().err
    assert "bad: " in err and "shape" in err and "1 of 2 case(s)" in err


def test_instance_cases_follow_the_npz_prompts(tmp_path):
    gt = np.zeros((4, 10, 30), np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 2:6, 12:16] = 2
    prompts = np.array({"1": "lesions", "instance_label": 1}, dtype=object)
    np.savez_compressed(tmp_path / "g.npz", gts=gt, spacing=np.array([1.0, 1.0, 2.0]), text_prompts=prompts)
    np.savez_compressed(tmp_path / "p.npz", segs=(gt > 0).astype(np.uint8))  # binary: split into components
    assert main(["evaluate", str(tmp_path / "p.npz"), str(tmp_path / "g.npz"), "-o", str(tmp_path / "m.csv")]) == 0
    (row,) = read_csv(tmp_path / "m.csv")
    assert (row["name"], row["tp"], row["fp"], row["fn"], row["dsc"]) == ("lesions", "2", "0", "0", "")
    assert float(row["f1"]) == 1.0


def test_cases_the_official_evaluation_reads_otherwise_are_named(tmp_path, capsys):
    # Labels above 255 (read as 8-bit there), a ground truth without background (its smallest label skipped)
    # and a binary prediction of more components than 8 bits can number.
    wide = two_organs().astype(np.uint16)
    wide[wide == 2] = 300
    full = two_organs() + 1
    for name, gt in (("wide", wide), ("full", full)):
        (tmp_path / name).mkdir()
        write(gt, tmp_path / name / "p.nrrd")
        write(gt, tmp_path / name / "g.nrrd")
        assert main(["evaluate", str(tmp_path / name / "p.nrrd"), str(tmp_path / name / "g.nrrd"),
                     "-o", str(tmp_path / name / "m.csv")]) == 0
    specks = np.zeros((1, 40, 40), np.uint8)
    specks[:, ::2, ::2] = 1  # 400 components, numbered 2..401 there
    (tmp_path / "specks").mkdir()
    write(specks, tmp_path / "specks" / "p.nrrd")
    write(specks, tmp_path / "specks" / "g.nrrd")
    assert main(["evaluate", str(tmp_path / "specks" / "p.nrrd"), str(tmp_path / "specks" / "g.nrrd"), "--instance",
                 "-o", str(tmp_path / "specks" / "m.csv")]) == 0
    err = capsys.readouterr().err
    assert "g: label value 300: the official evaluation reads labels as 8-bit" in err
    assert "g: the ground truth has no background" in err
    assert "g: label value 401: the official evaluation reads labels as 8-bit" in err
