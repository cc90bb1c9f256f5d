"""Build the demo model's training set, and its held-out check set, from images that packages install.

    python scripts/prepare_demo_data.py build/demo-data [--heldout build/demo-heldout]
    python scripts/prepare_demo_data.py --heldout build/demo-heldout      # the held-out check set only

Sources (install with scripts/install_data.sh and `pip install nilearn`; nothing is downloaded here):
* Debian mricron-data, /usr/share/mricron/templates/: ch2.nii.gz (Colin27 T1, 1 mm), ch2bet.nii.gz (the same,
  skull-stripped), aal.nii.gz + aal.nii.txt (AAL, 116 regions drawn on this very brain).
* Debian invesalius-examples: Cranium.inv3, a tar.gz holding a head CT in HU (raw int16 `matrix.dat`).
* PyPI nilearn (held-out only): the MNI ICBM152 2009 template (skull-stripped T1) and its GM/WM probability maps.
* Debian insighttoolkit5-examples (held-out only): KmeansTest T1 with its 7-class k-means tissue map.

How every label is derived (this is the model card's "labels" section):
* brain: the ch2bet mask (ch2bet > 0).
* cerebrospinal fluid / gray matter / white matter: a 3-class Otsu split of the ch2 T1 intensities inside the brain
  mask (thresholds printed when the script runs) — an intensity clustering, not a manual tissue segmentation.
* cerebellum, thalamus, caudate, putamen, hippocampus: the AAL regions (cerebellar hemispheres and vermis; left and
  right merged), kept inside the brain mask.
* left / right hemisphere: brain voxels on either side of the mid-sagittal plane x = 0 (Colin27 lies in MNI space),
  cerebellum excluded.
* head CT: bone = HU ≥ 226 and head = HU ≥ −142 (the two threshold masks the InVesalius project itself stores),
  the head being the largest connected component with its holes (airways, sinuses) filled slice by slice and the
  bone kept inside it. Threshold masks, not anatomy.
Images are put on the network's 0–255 scale by `medals.intensity.to_model_range`, the rule inference applies (8-bit
MRI passes unchanged; CT through the default soft-tissue window).

Held-out set (a different brain for the MRI structures): MNI152 with brain = template > 0.2 of its maximum
(nilearn's brain-mask rule), gray / white matter = probability > 0.5, cerebellum = AAL resampled onto it through
world coordinates (nearest neighbour) inside the brain — an approximate atlas label, not a segmentation of this
brain; and the ITK T1 with brain = its k-means classes inside the head (4, 5, 6), gray matter = class 5, white
matter = class 6. `tasks.json` lists, per check, the image, the prompts and the reference label map.
"""
from __future__ import annotations

import argparse
import json
import plistlib
import sys
import tarfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medals.intensity import to_model_range
from medals.io import Volume, read_volume, write_labels, write_volume

MRICRON = Path("/usr/share/mricron/templates")
INVESALIUS = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")

BONE_HU, HEAD_HU = 226, -142

TISSUES = ("cerebrospinal fluid", "gray matter", "white matter")
SIDES = ("left", "right")
REGIONS = ("cerebrum", "cerebellum", "thalamus", "caudate", "putamen", "hippocampus")
AAL_REGIONS = {"cerebellum": range(91, 117), "thalamus": (77, 78), "caudate": (71, 72), "putamen": (73, 74),
               "hippocampus": (37, 38)}
"""AAL label values of each region (left and right; 91–116 are the cerebellar hemispheres and the vermis)."""

SYNONYMS = {
    "brain": ["brain", "whole brain", "brain mask", "brain in T1-weighted MRI", "brain tissue on MR",
              "brain parenchyma in MRI"],
    "cerebrospinal fluid": ["cerebrospinal fluid", "CSF", "intracranial CSF", "ventricles and sulcal CSF",
                            "cerebrospinal fluid in brain MRI"],
    "gray matter": ["gray matter", "grey matter", "cerebral gray matter", "gray matter of the brain in T1 MRI",
                    "cortical and deep gray matter on MR"],
    "white matter": ["white matter", "cerebral white matter", "brain white matter", "white matter in T1-weighted MRI",
                     "white matter of the brain on MR"],
    "cerebellum": ["cerebellum", "the cerebellum", "cerebellar hemispheres and vermis", "cerebellum in brain MRI",
                   "cerebellum on T1 MR"],
    "left hemisphere": ["left hemisphere", "left cerebral hemisphere", "left half of the cerebrum",
                        "left hemisphere of the brain in MRI"],
    "right hemisphere": ["right hemisphere", "right cerebral hemisphere", "right half of the cerebrum",
                         "right hemisphere of the brain in MRI"],
    "thalamus": ["thalamus", "thalami", "left and right thalamus", "thalamus in brain MRI"],
    "caudate nucleus": ["caudate nucleus", "caudate", "caudate nuclei", "caudate nucleus in T1 MRI"],
    "putamen": ["putamen", "putamina", "left and right putamen", "putamen in brain MRI"],
    "hippocampus": ["hippocampus", "hippocampi", "hippocampal formation", "hippocampus in T1-weighted MRI"],
    "head": ["head", "whole head", "head in CT", "head region on computed tomography", "the patient's head"],
    "bone": ["bone", "skull", "skull and facial bones", "bones of the head in CT", "bone on head CT"],
}


def parcel_value(tissue, side, region):
    """Label value of a (tissue, side, region) parcel: 1 + tissue + 3·side + 6·region (1 … 36); works on arrays."""
    return 1 + tissue + len(TISSUES) * side + len(TISSUES) * len(SIDES) * region


def parcel_values(tissues=range(3), sides=range(2), regions=range(len(REGIONS))) -> list[int]:
    return sorted(parcel_value(t, s, r) for t in tissues for s in sides for r in regions)


def otsu_thresholds(values: np.ndarray, classes: int = 3) -> list[float]:
    """Multi-Otsu thresholds (classes − 1 of them) of a set of intensities, from a 128-bin histogram."""
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(classes - 1)
    otsu.SetNumberOfHistogramBins(128)
    otsu.Execute(sitk.GetImageFromArray(values.astype(np.float32)[None, None, :]))
    return list(otsu.GetThresholds())


def lps_x(image: sitk.Image) -> np.ndarray:
    """LPS x coordinate (mm) of every voxel centre, (k, j, i): x = origin_x + Σ_c direction[x, c]·spacing_c·index_c."""
    row = np.array(image.GetDirection()).reshape(3, 3)[0] * np.array(image.GetSpacing())  # per (i, j, k)
    size_i, size_j, size_k = image.GetSize()
    return (image.GetOrigin()[0] + row[0] * np.arange(size_i)[None, None, :] + row[1] * np.arange(size_j)[None, :, None]
            + row[2] * np.arange(size_k)[:, None, None]) + np.zeros((size_k, size_j, size_i))


def colin27_parcellation() -> tuple[np.ndarray, dict]:
    """(k, j, i) parcel labels of Colin27 (0 outside the brain) and the derivation's numbers."""
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(MRICRON / "ch2.nii.gz"))).astype(np.float32)
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(MRICRON / "ch2bet.nii.gz"))) > 0
    aal_image = sitk.ReadImage(str(MRICRON / "aal.nii.gz"))
    aal = sitk.GetArrayFromImage(aal_image)
    low, high = otsu_thresholds(t1[brain])
    tissue = np.digitize(t1, [low, high])  # 0 CSF, 1 GM, 2 WM
    x = lps_x(aal_image)
    side = (x <= 0).astype(np.int64)  # LPS: +x is the subject's left
    region = np.zeros(t1.shape, dtype=np.int64)
    for name, values in AAL_REGIONS.items():
        region[np.isin(aal, list(values))] = REGIONS.index(name)
    labels = np.where(brain, parcel_value(tissue, side, region), 0)
    left_names = [int(line.split()[0]) for line in (MRICRON / "aal.nii.txt").read_text().splitlines()
                  if line.split() and line.split()[1].endswith("_L")]
    facts = {"otsu_thresholds": [round(low, 2), round(high, 2)],
             "brain_ml": round(float(brain.sum()) / 1000, 1),
             "aal_left_regions_at_lps_x_gt_0": round(float((x[np.isin(aal, left_names)] > 0).mean()), 4)}
    return labels.astype(np.uint8), facts


def brain_prompt_set() -> dict:
    every = parcel_values()
    not_cerebellum = [r for r in range(len(REGIONS)) if REGIONS[r] != "cerebellum"]
    structures = {
        "brain": every,
        "cerebrospinal fluid": parcel_values(tissues=[0]),
        "gray matter": parcel_values(tissues=[1]),
        "white matter": parcel_values(tissues=[2]),
        "cerebellum": parcel_values(regions=[REGIONS.index("cerebellum")]),
        "left hemisphere": parcel_values(sides=[0], regions=not_cerebellum),
        "right hemisphere": parcel_values(sides=[1], regions=not_cerebellum),
        "thalamus": parcel_values(regions=[REGIONS.index("thalamus")]),
        "caudate nucleus": parcel_values(regions=[REGIONS.index("caudate")]),
        "putamen": parcel_values(regions=[REGIONS.index("putamen")]),
        "hippocampus": parcel_values(regions=[REGIONS.index("hippocampus")]),
    }
    return {"modality": "mri", "instance": False,
            "structures": [{"name": n, "values": v, "synonyms": SYNONYMS[n]} for n, v in structures.items()],
            "mirror_pairs": [["left hemisphere", "right hemisphere"]]}


def read_invesalius_ct() -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU volume (k, j, i) int16 and its (k, j, i) spacing from the InVesalius project archive."""
    with tarfile.open(INVESALIUS) as archive:
        members = {Path(m.name).name: m for m in archive.getmembers()}
        main = plistlib.load(archive.extractfile(members["main.plist"]))
        raw = archive.extractfile(members[main["matrix"]["filename"]]).read()
    hu = np.frombuffer(raw, dtype=main["matrix"]["dtype"]).reshape(main["matrix"]["shape"])
    x, y, z = main["spacing"]
    return hu.copy(), (float(z), float(y), float(x))


def head_ct_labels(hu: np.ndarray, spacing) -> tuple[np.ndarray, dict]:
    """(k, j, i) labels: 1 head outside bone, 2 bone; both threshold masks (see the module docstring)."""
    components, count = ndimage.label(hu >= HEAD_HU)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    head = components == sizes.argmax()
    head = np.stack([ndimage.binary_fill_holes(plane) for plane in head])
    bone = head & (hu >= BONE_HU)
    labels = np.where(bone, 2, np.where(head, 1, 0)).astype(np.uint8)
    return labels, {"head_components_dropped": int(count - 1),
                    "head_ml": round(float(head.sum()) * float(np.prod(spacing)) / 1000, 1),
                    "bone_ml": round(float(bone.sum()) * float(np.prod(spacing)) / 1000, 1)}


def ct_prompt_set() -> dict:
    return {"modality": "ct", "instance": False, "structures": [
        {"name": "head", "values": [1, 2], "synonyms": SYNONYMS["head"]},
        {"name": "bone", "values": [2], "synonyms": SYNONYMS["bone"]}]}


def model_range_uint8(array: np.ndarray, modality: str) -> np.ndarray:
    """The image on the 0–255 model scale, rounded to uint8 (the scale inference passes through unchanged)."""
    return np.rint(to_model_range(array, modality)).astype(np.uint8)


def build_training_set(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    t1 = read_volume(MRICRON / "ch2.nii.gz")
    stripped = read_volume(MRICRON / "ch2bet.nii.gz")
    labels, facts = colin27_parcellation()
    write_volume(Volume(model_range_uint8(t1.array, "mri"), t1.spacing, t1.origin, t1.direction),
                 folder / "images/colin27_t1.nii.gz")
    write_volume(Volume(model_range_uint8(stripped.array, "mri"), t1.spacing, t1.origin, t1.direction),
                 folder / "images/colin27_t1_stripped.nii.gz")
    write_labels(labels, t1, folder / "labels/colin27.nii.gz")

    hu, spacing = read_invesalius_ct()
    ct_labels, ct_facts = head_ct_labels(hu, spacing)
    ct = Volume(model_range_uint8(hu, "ct"), spacing)
    write_volume(ct, folder / "images/head_ct.nii.gz")
    write_labels(ct_labels, ct, folder / "labels/head_ct.nii.gz")

    dataset = {"format": "medals-dataset/1",
               "prompt_sets": {"brain_t1": brain_prompt_set(), "head_ct": ct_prompt_set()},
               "cases": [
                   {"name": "colin27_t1", "image": "images/colin27_t1.nii.gz", "labels": "labels/colin27.nii.gz",
                    "prompt_set": "brain_t1"},
                   {"name": "colin27_t1_stripped", "image": "images/colin27_t1_stripped.nii.gz",
                    "labels": "labels/colin27.nii.gz", "prompt_set": "brain_t1"},
                   # half as often as each Colin27 image: the demo is mainly a brain-MRI model
                   {"name": "head_ct", "image": "images/head_ct.nii.gz", "labels": "labels/head_ct.nii.gz",
                    "prompt_set": "head_ct", "weight": 0.5}]}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
    return {"colin27": facts, "head_ct": ct_facts}


def nilearn_data() -> Path:
    import nilearn
    return Path(nilearn.__file__).parent / "datasets" / "data"


def build_heldout_set(folder: Path) -> list[dict]:
    """MNI152 and ITK T1 images with reference label maps, and tasks.json pairing each with its prompts."""
    data = nilearn_data()
    mni_path = data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    mni = read_volume(mni_path)
    t1 = mni.array.astype(np.float32)
    brain = t1 > 0.2 * t1.max()
    gm = read_volume(data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").array / 255.0 > 0.5
    wm = read_volume(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").array / 255.0 > 0.5
    aal_on_mni = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(MRICRON / "aal.nii.gz")),
                                                      sitk.ReadImage(str(mni_path)), sitk.Transform(),
                                                      sitk.sitkNearestNeighbor, 0))
    cerebellum = brain & np.isin(aal_on_mni, list(AAL_REGIONS["cerebellum"]))
    write_volume(mni, folder / "images/mni152.nii.gz")
    references = {"mni152_brain": (mni, brain.astype(np.uint8)),
                  "mni152_tissue": (mni, np.where(gm, 1, np.where(wm, 2, 0)).astype(np.uint8)),
                  "mni152_cerebellum": (mni, cerebellum.astype(np.uint8))}

    itk = read_volume(ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz")
    kmeans = read_volume(ITK_DATA / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz").array
    write_volume(itk, folder / "images/itk_t1.nii.gz")
    references["itk_t1_brain"] = (itk, np.isin(kmeans, [0, 4, 5, 6]).astype(np.uint8))
    references["itk_t1_tissue"] = (itk, np.where(kmeans == 5, 1, np.where(kmeans == 6, 2, 0)).astype(np.uint8))

    prompts = {"brain": {"1": "brain"}, "tissue": {"1": "gray matter", "2": "white matter"},
               "cerebellum": {"1": "cerebellum"}}
    tasks = []
    for name, (image, labels) in references.items():
        write_labels(labels, image, folder / f"labels/{name}.nii.gz")
        case, task = name.rsplit("_", 1)
        tasks.append({"name": name, "image": f"images/{case}.nii.gz", "modality": "mri", "prompts": prompts[task],
                      "reference": f"labels/{name}.nii.gz"})
    (folder / "tasks.json").write_text(json.dumps(tasks, indent=1) + "\n")
    return tasks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, nargs="?",
                        help="training-set folder to write (dataset.json, images/, labels/)")
    parser.add_argument("--heldout", type=Path, help="write the held-out check set to this folder")
    args = parser.parse_args(argv)
    if args.output is None and args.heldout is None:
        parser.error("give a training-set folder, --heldout FOLDER, or both")
    if args.output:
        facts = build_training_set(args.output)
        print(f"training set: {args.output / 'dataset.json'}")
        print(json.dumps(facts, indent=1))
    if args.heldout:
        tasks = build_heldout_set(args.heldout)
        print(f"held-out set: {len(tasks)} tasks in {args.heldout / 'tasks.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
