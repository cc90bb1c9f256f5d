"""Reading images and writing label maps: NIfTI, NRRD, MetaImage, DICOM series and the challenge `.npz`.

Every reader returns a `Volume`: the voxels in numpy order (k, j, i) (slices, rows, columns), the spacing in the
same order, and the ITK geometry (origin and direction in LPS millimetres) needed to write a label map back onto
the very same grid. Axis and spacing conventions of each format are converted here, once:

* ITK formats store spacing as (x, y, z) = (i, j, k); it is reversed.
* The challenge `.npz` stores `imgs` as (D, H, W) = (k, j, i) and `spacing` in the official order
  (spacing[0] ↔ H, spacing[1] ↔ W, spacing[2] ↔ D, spec §5.1), so spacing_kji = (s[2], s[0], s[1]).
  An npz has no geometry: origin 0, identity direction.

Every failure is an `InputError` with one line that names the file. Sizes are checked before voxels are read:
each format's header (or an npz member's array header) is read first and a volume of more than `max_voxels` is
refused before its payload is inflated. Writes go to a temporary name first and are moved into place at the end,
so an interrupted write never leaves a half-written label map.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

# Extension → format name. Longest suffixes first so ".nii.gz" wins over ".gz".
FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "meta", ".mhd": "meta",
           ".npz": "npz"}
SUPPORTED = ", ".join(FORMATS) + " or a DICOM folder"

MAX_VOXELS = 1 << 28
"""Largest volume read by default (256 Mi voxels, 1 GiB as float32): the server's default limit too."""
MAX_SPACING_MM = 1000.0
"""Largest voxel size accepted: a metre per voxel is already no scan, and larger values plan resampled grids
that no machine holds."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The model computes in float32: larger magnitudes would become infinite there."""
MAX_NIFTI_EXTENSION_BYTES = 64 << 20
"""Header extensions between a NIfTI header and its voxels; real ones are a few kB."""


@dataclass
class Volume:
    """One 3-D scalar image and where its voxels lie.

    array: (k, j, i) voxels, dtype as stored in the file.
    spacing: (k, j, i) voxel size in mm.
    origin: (x, y, z) position of voxel (0, 0, 0) in LPS mm, as ITK gives it.
    direction: 3×3 ITK direction matrix (row-major; column c is the LPS direction of axis c of (i, j, k)).
    source: the path it was read from ("" when built in memory).
    extras: format-specific items: "format" (a FORMATS value or "dicom"), and for the challenge npz
        "text_prompts" ({label value string: prompt, ..., "instance_label": 0 | 1}).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    def same_grid(self, other: "Volume", tolerance: float = 1e-4) -> bool:
        """True when both volumes have the same shape, spacing, origin and direction (up to `tolerance`)."""
        return (self.shape == other.shape
                and np.allclose(self.spacing, other.spacing, rtol=0, atol=tolerance)
                and np.allclose(self.origin, other.origin, rtol=0, atol=tolerance)
                and np.allclose(self.direction, other.direction, rtol=0, atol=tolerance))


def format_of(path) -> str:
    """The format name of a path ("nifti", "nrrd", "meta", "npz", or "dicom" for a folder)."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise InputError(f"{path}: unsupported file type (use {SUPPORTED})")


def case_name(path) -> str:
    """The file name without its format extension ("case_01.nii.gz" → "case_01"), used to pair files by name."""
    path = Path(path)
    name = path.name
    for suffix in FORMATS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_volume_files(folder) -> list[Path]:
    """The files of `folder` in a supported format, sorted by name (detached data files such as .raw excluded)."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            try:
                format_of(path)
            except InputError:
                continue
            found.append(path)
    return found


# ----------------------------------------------------------------------------------------------------- reading

# Arrays a challenge npz may hold: the image, the output segmentation, the ground truth.
NPZ_IMAGE_KEYS, NPZ_LABEL_KEYS = ("imgs",), ("segs", "gts")


def read_volume(path, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read one 3-D image (any supported format) into a validated `Volume`; one of more than `max_voxels` voxels
    is refused from its header, before its payload is read."""
    return _read(path, NPZ_IMAGE_KEYS, max_voxels)


def read_labels(path, spacing_if_absent=None, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read a 3-D label map (a segmentation or a ground truth) with its geometry; voxels as integers.

    From a challenge npz this is `segs` (an output) or else `gts` (a ground truth). `spacing_if_absent`
    ((k, j, i) mm) serves an npz that stores no spacing, as a prediction holding only `segs` may (the challenge
    takes a prediction's spacing from its case).
    """
    volume = _read(path, NPZ_LABEL_KEYS, max_voxels, spacing_if_absent)
    array = volume.array
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        if np.any(array != np.round(array)):
            raise InputError(f"{path}: is not a label map (it holds non-integer values)")
        volume.array = array.astype(np.int64)
    if volume.array.size and volume.array.min() < 0:
        raise InputError(f"{path}: is not a label map (it holds negative values)")
    return volume


def _read(path, npz_keys: tuple[str, ...], max_voxels: int, spacing_if_absent=None) -> Volume:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    kind = format_of(path)
    if kind == "npz":
        volume = _read_npz(path, npz_keys, max_voxels, spacing_if_absent)
    else:
        image = _read_dicom_series(path, max_voxels) if kind == "dicom" else _read_itk_file(path, kind, max_voxels)
        volume = _volume_from_itk(image, path)
        volume.extras["format"] = kind
    _check_volume(volume, path, allow_zero_spacing=kind == "npz")
    return volume


def check_voxel_count(shape, max_voxels: int, where) -> None:
    """InputError when a volume of `shape` (any number of axes) holds more than `max_voxels` voxels."""
    voxels = math.prod(int(size) for size in shape)
    if voxels > max_voxels:
        raise InputError(f"{where}: {' × '.join(str(int(size)) for size in shape)} = {voxels} voxels is over the "
                         f"limit of {max_voxels}")


def _read_itk_file(path: Path, kind: str, max_voxels: int) -> sitk.Image:
    if kind == "nifti":
        # ITK's NIfTI reader fills a truncated payload with zeros instead of failing, and trusts the header's
        # sizes and offset; check both (and the length) first.
        _check_nifti_payload(path, max_voxels)
    try:
        _check_itk_header(path, max_voxels)
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = _itk_reason(error)
        if "spacing" in reason.lower():  # ITK refuses zero spacing while reading the header
            raise InputError(f"{path}: invalid voxel spacing ({reason})") from None
        raise InputError(f"{path}: cannot be read, the file is corrupt, truncated or not a {kind} image "
                         f"({reason})") from None


def _check_itk_header(path: Path, max_voxels: int, files: int = 1) -> None:
    """Refuse an image whose header (read alone, no voxels) declares more than `max_voxels` voxels; a DICOM file
    is one slice of `files`."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    check_voxel_count([*size, files] if files > 1 else size, max_voxels, path)


def _read_dicom_series(folder: Path, max_voxels: int) -> sitk.Image:
    """The largest DICOM series of `folder` (by number of files), read as one volume."""
    reader = sitk.ImageSeriesReader()
    series = [reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in reader.GetGDCMSeriesIDs(str(folder))]
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder")
    files = max(series, key=len)
    reader.SetFileNames(files)
    try:
        _check_itk_header(Path(files[0]), max_voxels, len(files))
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: the DICOM series cannot be read ({_itk_reason(error)})") from None


def _itk_reason(error: RuntimeError) -> str:
    """The last informative line of an ITK exception (they span several lines and start with a source path)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception thrown", "/", "Reason:"))]
    return (useful or lines or ["unknown error"])[-1][:200]


def _volume_from_itk(image: sitk.Image, path: Path) -> Volume:
    dimension, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if dimension == 4 and image.GetSize()[3] == 1:
        # A 4-D file holding a single volume is a 3-D image written with a trailing unit axis.
        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
        dimension = 3
    if dimension == 2:
        raise InputError(f"{path}: is a 2-D image; a 3-D volume is needed")
    if dimension == 4:
        raise InputError(f"{path}: is a 4-D image with {image.GetSize()[3]} volumes; extract one 3-D volume first")
    if dimension != 3:
        raise InputError(f"{path}: has {dimension} dimensions; a 3-D volume is needed")
    if components != 1:
        raise InputError(f"{path}: has {components} components per voxel (e.g. RGB or a vector field); "
                         "a single-channel 3-D image is needed")
    return Volume(
        array=sitk.GetArrayFromImage(image),
        spacing=tuple(float(s) for s in reversed(image.GetSpacing())),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        source=str(path),
    )


def _check_nifti_payload(path: Path, max_voxels: int) -> None:
    """Raise InputError when a .nii/.nii.gz header declares impossible sizes or offset, more than `max_voxels`
    voxels, or more bytes than the file holds, or when float voxels are NaN or infinite (ITK's NIfTI reader silently
    turns those into zeros, so they must be caught here). The payload is streamed, and never past its declared end."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(544)
            layout = _nifti_layout(header, path, max_voxels)
            if layout is None:
                return  # not a NIfTI header: ITK will say so
            expected, offset, float_type = layout
            available, bad, pending = len(header), 0, header[offset:expected]
            while available < offset:  # header extensions before the voxels, skipped in bounded pieces
                skipped = len(stream.read(min(offset - available, 1 << 24)))
                if not skipped:
                    break
                available += skipped
            while True:
                if float_type is not None:  # count non-finite values in whole items, carrying the remainder
                    whole = len(pending) - len(pending) % float_type.itemsize
                    bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(pending[:whole], float_type))))
                    pending = pending[whole:]
                if available >= expected:
                    break
                chunk = stream.read(min(expected - available, 1 << 24))
                if not chunk:
                    break
                available += len(chunk)
                pending = pending + chunk if float_type is not None else b""
    except (OSError, EOFError) as error:  # gzip: "Compressed file ended before the end-of-stream marker ..."
        raise InputError(f"{path}: is corrupt or truncated ({error})") from None
    if available < expected:
        raise InputError(f"{path}: is truncated ({available} of {expected} bytes)")
    if bad:
        raise InputError(f"{path}: {bad} of {(expected - offset) // float_type.itemsize} voxels are NaN or infinite")


NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
"""NIfTI datatype codes of real floating-point voxels → numpy type (without byte order)."""


def _nifti_layout(header: bytes, path: Path, max_voxels: int) -> tuple[int, int, np.dtype | None] | None:
    """(file length the header implies, voxel data offset, float voxel type or None), or None when `header` is not
    a NIfTI-1/-2 header; InputError for sizes or an offset no real file has, or more than `max_voxels` voxels."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:  # NIfTI-1
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = struct.unpack(order + "f", header[108:112])[0]
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:  # NIfTI-2
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    rank = dims[0]
    if not 1 <= rank <= 7:
        raise InputError(f"{path}: the NIfTI header's dim[0] = {rank} is not a number of axes (1 to 7)")
    sizes = dims[1:rank + 1]
    if min(sizes) < 1:
        axis = sizes.index(min(sizes)) + 1
        raise InputError(f"{path}: the NIfTI header's dim[{axis}] = {sizes[axis - 1]} is not a positive size")
    check_voxel_count(sizes, max_voxels, path)
    if not math.isfinite(offset) or not 0 <= offset <= len(header) + MAX_NIFTI_EXTENSION_BYTES:
        raise InputError(f"{path}: the NIfTI header's vox_offset {offset} does not point just past its header "
                         f"(at most {MAX_NIFTI_EXTENSION_BYTES} bytes of extensions)")
    offset = max(int(offset), 348)
    float_type = np.dtype(order + NIFTI_FLOAT_TYPES[datatype]) if datatype in NIFTI_FLOAT_TYPES else None
    return offset + math.prod(sizes) * max(bitpix, 8) // 8, offset, float_type


# The challenge npz stores `text_prompts` as a 0-d object array, which numpy can only save as a pickle. Unpickling
# untrusted data can run arbitrary code, so that one member is unpickled with an allow-list of the numpy globals
# an object array of a dict of strings and numbers needs; everything else in the file is read with pickle off.
_PICKLE_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
                   ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
                   ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}


class _PromptUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


MAX_TEXT_PROMPTS_BYTES = 1 << 20
"""An npz's `text_prompts` member, inflated: a few hundred prompts take a few kB."""


def _read_npy_header(stream) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of an .npy stream, leaving the stream at the start of its data."""
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    return shape, dtype


def _read_text_prompts(archive: zipfile.ZipFile, path: Path) -> dict:
    """The `text_prompts` dict of a challenge npz: {label value string: prompt, "instance_label": 0 | 1}."""
    size = archive.getinfo("text_prompts.npy").file_size
    if size > MAX_TEXT_PROMPTS_BYTES:
        raise InputError(f"{path}: text_prompts inflates to {size} bytes, over the limit of {MAX_TEXT_PROMPTS_BYTES}")
    try:
        with archive.open("text_prompts.npy") as stream:
            _read_npy_header(stream)
            value = _PromptUnpickler(stream).load()
    except Exception as error:  # noqa: BLE001 — any failure here means the member is not what the challenge writes
        raise InputError(f"{path}: text_prompts cannot be read ({error})") from None
    prompts = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    if not isinstance(prompts, dict):
        raise InputError(f"{path}: text_prompts is a {type(prompts).__name__}, expected a dict of prompts")
    return {str(key): (text.item() if isinstance(text, np.generic) else text) for key, text in prompts.items()}


def _check_npz_member(archive: zipfile.ZipFile, key: str, path: Path, max_voxels: int) -> None:
    """Refuse the array `key` from its .npy header and its inflated size before it is read: over `max_voxels`, or
    more bytes than its shape needs (numpy would inflate all of them)."""
    name = f"{key}.npy"
    if name not in archive.namelist():
        return
    with archive.open(name) as stream:
        shape, dtype = _read_npy_header(stream)
        start = stream.tell()
    check_voxel_count(shape, max_voxels, f"{path}: '{key}'")
    declared = archive.getinfo(name).file_size
    if declared > start + math.prod(shape) * dtype.itemsize:
        raise InputError(f"{path}: '{key}' inflates to {declared} bytes, more than its shape {shape} holds")


def _read_npz(path: Path, keys: tuple[str, ...], max_voxels: int, spacing_if_absent=None) -> Volume:
    """The first of `keys` present in a challenge npz, with its spacing ((k, j, i) `spacing_if_absent` when it
    stores none) and prompts."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {Path(name).stem for name in archive.namelist()}
            prompts = _read_text_prompts(archive, path) if "text_prompts" in members else None
            for key in [*keys, "spacing"]:
                _check_npz_member(archive, key, path, max_voxels)
        with np.load(path, allow_pickle=False) as arrays:
            key = next((k for k in keys if k in arrays.files), None)
            if key is None:
                wanted = " or ".join(f"'{k}'" for k in keys)
                raise InputError(f"{path}: has no {wanted} array (found {', '.join(arrays.files) or 'nothing'})")
            image = arrays[key]
            stored_spacing = arrays["spacing"] if "spacing" in arrays.files else None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: is corrupt or truncated ({error})") from None
    if image.ndim != 3:
        raise InputError(f"{path}: '{key}' has {image.ndim} dimensions {image.shape}; (D, H, W) is needed")
    if stored_spacing is None and spacing_if_absent is not None:
        spacing = tuple(float(s) for s in spacing_if_absent)
    elif stored_spacing is None or np.shape(stored_spacing) != (3,):
        raise InputError(f"{path}: 'spacing' must hold 3 values, found {stored_spacing!r}")
    else:
        spacing = npz_spacing_to_kji(stored_spacing)
    extras = {"format": "npz"}
    if prompts is not None:
        extras["text_prompts"] = prompts
    return Volume(array=image, spacing=spacing, source=str(path), extras=extras)


def npz_spacing_to_kji(spacing) -> tuple[float, float, float]:
    """Challenge npz spacing (H, W, D order) → (k, j, i) = (D, H, W) order."""
    s = [float(v) for v in spacing]
    return s[2], s[0], s[1]


def kji_spacing_to_npz(spacing) -> tuple[float, float, float]:
    """(k, j, i) = (D, H, W) spacing → the challenge npz order (H, W, D)."""
    k, j, i = (float(v) for v in spacing)
    return j, i, k


def _check_volume(volume: Volume, path: Path, allow_zero_spacing: bool) -> None:
    """Spacing and voxel values a segmentation can work with.

    An npz may store a zero spacing: the challenge pipeline defines what zero or tiny values mean (values < 0.1
    are treated as 1 mm, spec §5.1), so they are left to it. Negative or non-finite spacing is refused everywhere.
    """
    check_spacing(volume.spacing, path, allow_zero_spacing)
    if not (np.issubdtype(volume.array.dtype, np.number) or volume.array.dtype == bool):
        raise InputError(f"{path}: voxels of type {volume.array.dtype} are not numbers")
    bad = count_unusable_voxels(volume.array)
    if bad:
        raise InputError(f"{path}: {bad} of {volume.array.size} voxels are NaN, infinite or beyond the float32 "
                         "range the model computes in")


def check_spacing(spacing, where, allow_zero: bool = False) -> tuple[float, float, float]:
    """Three voxel sizes in mm, each positive (or zero where `allow_zero`), finite and at most `MAX_SPACING_MM`;
    InputError naming `where` otherwise."""
    values = np.asarray(spacing, dtype=np.float64)
    low_ok = np.all(values >= 0) if allow_zero else np.all(values > 0)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or not low_ok or np.any(values > MAX_SPACING_MM):
        raise InputError(f"{where}: invalid voxel spacing {tuple(values.tolist())} mm (must be positive, finite "
                         f"and at most {MAX_SPACING_MM:g} mm)")
    return tuple(float(v) for v in values)


def count_unusable_voxels(array: np.ndarray, chunk: int = 1 << 22) -> int:
    """Voxels that are NaN, infinite, or too large for float32, counted a slice at a time (no full-size mask)."""
    if not np.issubdtype(array.dtype, np.inexact):
        return 0
    flat = array.reshape(-1)
    return sum(int(np.count_nonzero(~(np.abs(flat[start:start + chunk]) <= FLOAT32_MAX)))
               for start in range(0, flat.size, chunk))


# ----------------------------------------------------------------------------------------------------- writing

def write_labels(labels: np.ndarray, reference: Volume, path) -> Path:
    """Write a (k, j, i) label map on `reference`'s grid (same shape, spacing, origin, direction) to `path`.

    The format follows the extension. ITK formats get uint8 labels (uint16 above 255); the npz gets the
    challenge's `segs` (int16, (D, H, W)), `spacing` in npz order and the reference's `text_prompts`.
    """
    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise InputError(f"{path}: label map shape {labels.shape} differs from the image's {reference.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"{path}: label maps must be integers, got {labels.dtype}")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0:
        raise InputError(f"{path}: label values must not be negative (found {low})")
    if format_of(path) == "npz":
        if high > np.iinfo(np.int16).max:
            raise InputError(f"{path}: label value {high} does not fit the challenge's int16 segs")
        dtype = np.int16
    else:
        dtype = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16
        if high > np.iinfo(np.uint16).max:
            raise InputError(f"{path}: label value {high} exceeds 65535")
    labels_volume = Volume(labels.astype(dtype, copy=False), reference.spacing, reference.origin,
                           reference.direction, str(path), dict(reference.extras))
    return write_volume(labels_volume, path, npz_key="segs")


def write_volume(volume: Volume, path, npz_key: str = "imgs") -> Path:
    """Write `volume` with its geometry to `path` (format from the extension); npz arrays go under `npz_key`.

    DICOM output is not offered: a label map belongs in a segmentation format (.nii.gz, .nrrd, .mha, .npz).
    """
    path = Path(path)
    kind = format_of(path)
    if kind == "dicom":
        raise InputError(f"{path}: writing DICOM is not supported; use {', '.join(FORMATS)}")
    # Write under the final name inside a private folder beside the target (so detached headers such as .mhd
    # and .nhdr keep pointing at their data file), then move every written file into place.
    staging = _staging_folder(path)
    try:
        staged = staging / path.name
        if kind == "npz":
            _write_npz(volume, staged, npz_key)
        else:
            sitk.WriteImage(_itk_image(volume), str(staged), useCompression=not path.name.lower().endswith(".nii"))
        for written in staging.iterdir():
            os.replace(written, path.parent / written.name)
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be written ({_itk_reason(error)})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be written ({error.strerror or error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _staging_folder(path: Path) -> Path:
    """A new private folder beside `path` (its parents created); InputError when that place cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".medals-write-", dir=path.parent))
    except OSError as error:
        raise InputError(f"{path}: cannot be written ({error.strerror or error})") from None


def check_writable(path) -> None:
    """InputError unless a file can be written at `path`: its folder exists or can be made, and accepts files.

    Tried for real (a private folder is made beside it and removed), so a read-only or virtual file system, or a
    regular file where a folder should be, is found before any work rather than after it.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name for the output")
    shutil.rmtree(_staging_folder(path), ignore_errors=True)


def _itk_image(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing([float(s) for s in reversed(volume.spacing)])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(d) for d in np.asarray(volume.direction, dtype=np.float64).ravel()])
    return image


def _write_npz(volume: Volume, path: Path, key: str) -> None:
    arrays = {key: volume.array, "spacing": np.asarray(kji_spacing_to_npz(volume.spacing), dtype=np.float64)}
    if "text_prompts" in volume.extras:
        arrays["text_prompts"] = np.array(volume.extras["text_prompts"], dtype=object)
    with open(path, "wb") as stream:
        np.savez_compressed(stream, **arrays)
