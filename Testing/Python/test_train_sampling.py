"""Training data: dataset loading, patch placement and resampling, mirroring, intensity augmentation, batches."""
import json
import numpy as np
import pytest
import torch

from medals.errors import InputError
from medals.io import Volume, write_volume
from medals.pipeline.zoom import plan_zoom
from medals.train.batches import SampleSettings, collate, draw_sample
from medals.train.dataset import load_dataset
from medals.train.intensity import IntensityAugmentation, augment_intensity
from medals.train.spatial import (QUARTER_TURNS, Placement, SpatialAugmentation, cut_patch, plan_placement,
                                  random_transform, roi_region)
from train_fixtures import BALL, SHELL, TOY_SPACING, toy_labels, write_toy_dataset

IDENTITY = torch.eye(3, dtype=torch.float64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(write_toy_dataset(tmp_path_factory.mktemp("toy")))


@pytest.fixture(scope="module")
def case(dataset):
    return dataset.cases[0]


def unit_placement(case, centre, transform=IDENTITY):
    """Read the source grid voxel for voxel (working spacing = the case's own)."""
    return Placement(centre, case.spacing, case.spacing, transform)


def test_cases_are_held_in_network_order_with_the_spacing_to_match(case):
    labels = toy_labels()  # (k, j, i)
    assert tuple(case.image.shape) == (labels.shape[1], labels.shape[2], labels.shape[0])
    assert case.spacing == (TOY_SPACING[1], TOY_SPACING[2], TOY_SPACING[0])
    assert torch.equal(case.labels, torch.from_numpy(labels).movedim(0, -1).float())


def test_a_structure_of_several_values_is_their_union(case):
    masks = case.structure_masks(case.labels)
    ball, shell, whole = masks[0], masks[1], masks[2]
    assert torch.equal(whole, ball | shell)
    assert torch.equal(ball, case.labels == BALL) and torch.equal(shell, case.labels == SHELL)


def test_boxes_and_locations_lie_on_their_structure(case):
    for s in case.present:
        mask = case.structure_masks(case.labels)[s]
        assert torch.all(mask[tuple(case.locations[s].T)])
        (lo, hi) = case.boxes[s]
        inside = torch.zeros_like(mask)
        inside[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
        assert mask.sum() == (mask & inside).sum()


def test_unit_placement_reads_the_voxels_unchanged(case):
    # Centre at half-voxel positions so that an even crop lands on whole voxels: offsets ±0.5, ±1.5, ...
    image, masks = cut_patch(case, unit_placement(case, (10.5, 9.5, 8.5)), (8, 6, 4))
    assert torch.allclose(image, case.image[7:15, 7:13, 7:11], atol=1e-4)
    assert torch.equal(masks, case.structure_masks(case.labels[7:15, 7:13, 7:11]))


def test_outside_the_volume_reads_zero(case):
    # offsets ±0.5, ±1.5 around 0.5: the first row of each axis reads position −1
    image, masks = cut_patch(case, unit_placement(case, (0.5, 0.5, 0.5)), (4, 4, 4))
    assert torch.all(image[0] == 0) and torch.all(image[:, :, 0] == 0) and image[1:, 1:, 1:].min() > 0


def test_a_mirrored_patch_is_flipped_and_swaps_left_and_right(case):
    plain_image, plain = cut_patch(case, unit_placement(case, (13.5, 11.5, 9.5)), (28, 24, 20))
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    image, masks = cut_patch(case, unit_placement(case, (13.5, 11.5, 9.5), mirror), (28, 24, 20))
    assert torch.equal(image, plain_image.flip(2))
    left, right = 3, 4  # structure indices of the toy set's mirror pair
    assert torch.equal(masks[left], plain[right].flip(2)) and torch.equal(masks[right], plain[left].flip(2))
    assert torch.equal(masks[0], plain[0].flip(2))


def test_a_quarter_turn_matches_rot90(case):
    turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    cube = (16, 16, 8)
    plain, _ = cut_patch(case, unit_placement(case, (13.5, 11.5, 9.5)), cube)
    # the case's h and w spacings are equal, so a turn in millimetres is a turn of the voxel grid
    turned, _ = cut_patch(case, unit_placement(case, (13.5, 11.5, 9.5), turn), cube)
    assert torch.allclose(turned, torch.rot90(plain, 1, dims=(1, 0)), atol=1e-4)


def test_the_24_quarter_turns_are_distinct_proper_rotations():
    assert len(QUARTER_TURNS) == 24
    assert len({tuple(m.flatten().tolist()) for m in QUARTER_TURNS}) == 24
    assert all(torch.det(m).item() == pytest.approx(1) for m in QUARTER_TURNS)


def test_random_transforms_mirror_exactly_when_their_determinant_is_negative():
    settings = SpatialAugmentation(rotation_prob=1.0, scale_prob=1.0, flip_prob=0.5, quarter_turn_prob=0.5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        transform = random_transform(settings, generator)
        singular = torch.linalg.svdvals(transform)
        assert torch.allclose(singular, singular[0].expand(3))  # a rotation times an isotropic scale
        assert 0.7 - 1e-9 <= singular[0] <= 1.4 + 1e-9


def test_roi_patches_are_centred_inside_a_grown_structure_box(case):
    settings = SpatialAugmentation(roi_prob=1.0)
    generator = torch.Generator().manual_seed(0)
    boxes = [roi_region(case.boxes[s], case.image.shape) for s in case.present]
    for _ in range(20):
        centre = plan_placement(case, (16, 16, 16), (3.0, 3.0, 3.0), settings, generator).centre
        assert any(all(lo <= c <= hi for c, lo, hi in zip(centre, *box)) for box in boxes)


def test_foreground_patches_are_centred_on_a_structure_voxel(case):
    settings = SpatialAugmentation(roi_prob=0.0, foreground_prob=1.0)
    generator = torch.Generator().manual_seed(0)
    all_masks = case.structure_masks(case.labels).any(0)
    for _ in range(20):
        centre = plan_placement(case, (16, 16, 16), (3.0, 3.0, 3.0), settings, generator).centre
        assert all_masks[tuple(int(c) for c in centre)]


@pytest.mark.parametrize("single, n_classes", [(1.0, 1), (0.0, 5)])
def test_the_zoom_is_the_inference_zoom_policy_for_the_whole_image(case, single, n_classes):
    settings = SpatialAugmentation(roi_prob=0.0, single_class_prob=single)
    placement = plan_placement(case, (32, 32, 32), (3.0, 3.0, 3.0), settings, torch.Generator().manual_seed(0))
    zoom = plan_zoom(tuple(case.image.shape), case.spacing, (32, 32, 32), (3.0, 3.0, 3.0), n_classes)
    assert (placement.spacing, placement.target) == (zoom.spacing, zoom.target)


def test_intensity_augmentation_stays_on_the_0_255_scale():
    settings = IntensityAugmentation(brightness_prob=1, contrast_prob=1, gamma_prob=1, noise_prob=1,
                                     brightness_range=(1.5, 1.5), noise_std_range=(20, 20))
    image = torch.linspace(0, 255, 1000).view(10, 10, 10)
    out = augment_intensity(image, settings, torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 255 and not torch.equal(out, image)


def test_intensity_augmentation_with_zero_probabilities_changes_nothing():
    settings = IntensityAugmentation(brightness_prob=0, contrast_prob=0, gamma_prob=0, noise_prob=0)
    image = torch.rand(6, 6, 6) * 255
    assert torch.equal(augment_intensity(image, settings, torch.Generator()), image)


def test_samples_pair_every_query_with_its_structure_mask(case):
    generator = torch.Generator().manual_seed(0)
    synonyms = {text: s for s, structure in enumerate(case.prompt_set.structures) for text in structure.synonyms}
    settings = SampleSettings(intensity=IntensityAugmentation(0, contrast_prob=0, gamma_prob=0, noise_prob=0))
    for _ in range(5):
        sample = draw_sample(case, (16, 16, 16), (3.0, 3.0, 3.0), settings, generator)
        assert sample.image.shape == (1, 16, 16, 16) and sample.sc.shape == (1, 16, 16, 16)
        assert len(sample.texts) == len(sample.targets) == len(sample.mc) <= settings.queries.max_queries
        # "object" is ball ∪ shell: its target is the union of theirs whenever all three are asked
        by_structure = {synonyms[t]: target for t, target in zip(sample.texts, sample.targets)}
        if {0, 1, 2} <= set(by_structure):
            assert torch.equal(by_structure[2], torch.maximum(by_structure[0], by_structure[1]))


def test_collate_pads_queries_and_marks_the_real_ones(case):
    generator = torch.Generator().manual_seed(1)
    samples = [draw_sample(case, (16, 16, 16), (3.0, 3.0, 3.0), SampleSettings(), generator) for _ in range(3)]
    texts = sorted({t for s in samples for t in s.texts})
    batch = collate(samples, {t: k for k, t in enumerate(texts)}, ("ct", "mri"))
    n = max(len(s.texts) for s in samples)
    assert batch.targets.shape == (3, n, 16, 16, 16) and batch.mc.shape == (3, n, 16, 16, 16)
    assert batch.query_mask.sum(1).tolist() == [len(s.texts) for s in samples]
    assert not batch.targets[~batch.query_mask].any() and not batch.mc[~batch.query_mask].any()
    assert batch.modality.tolist() == [1, 1, 1]


def test_an_image_off_the_0_255_scale_is_refused(tmp_path):
    folder = write_toy_dataset(tmp_path, cases=1)
    write_volume(Volume(np.full((4, 4, 4), 1000.0, dtype=np.float32), (1.0, 1.0, 1.0)),
                 folder / "case0_image.nii.gz")
    write_volume(Volume(np.zeros((4, 4, 4), dtype=np.uint8), (1.0, 1.0, 1.0)), folder / "case0_labels.nii.gz")
    with pytest.raises(InputError, match="0–255"):
        load_dataset(folder)


def test_a_case_naming_an_unknown_prompt_set_is_refused(tmp_path):
    folder = write_toy_dataset(tmp_path, cases=1)
    values = json.loads((folder / "dataset.json").read_text())
    values["cases"][0]["prompt_set"] = "missing"
    (folder / "dataset.json").write_text(json.dumps(values))
    with pytest.raises(InputError, match="unknown prompt set 'missing'"):
        load_dataset(folder)


def test_a_mirror_pair_must_name_structures_of_its_set(tmp_path):
    folder = write_toy_dataset(tmp_path, cases=1)
    values = json.loads((folder / "dataset.json").read_text())
    values["prompt_sets"]["toy"]["mirror_pairs"] = [["left block", "nowhere"]]
    (folder / "dataset.json").write_text(json.dumps(values))
    with pytest.raises(InputError, match="mirror pair"):
        load_dataset(folder)
