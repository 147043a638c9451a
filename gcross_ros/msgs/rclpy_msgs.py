"""numpy <-> sensor_msgs conversions: Image, PointCloud2, CameraInfo, and stamps.

Reading never copies when the message layout allows it: the returned arrays are ``np.frombuffer`` views
into the message's ``data`` (keep the message alive while you use them; they are read-only). A copy is
made only to undo a foreign byte order or when the caller asks for a different type (16UC1 millimetres
-> float32 metres). Writing copies the array once into the message.

Conventions follow REP 118 (depth images: 16UC1 in millimetres, 32FC1 in metres, 0 or NaN = no reading)
and what RViz expects of point clouds (``rgb`` is a float32 field whose bits are the uint32 0x00RRGGBB).
"""
from __future__ import annotations

import array
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from gcross_core.image import depth_mm_to_m

# encoding -> (numpy element type, channels)
IMAGE_ENCODINGS: Dict[str, Tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8")
DEPTH_ENCODINGS = ("16UC1", "32FC1")

_POINT_FIELD_DTYPES: Dict[int, np.dtype] = {
    PointField.INT8: np.dtype(np.int8),
    PointField.UINT8: np.dtype(np.uint8),
    PointField.INT16: np.dtype(np.int16),
    PointField.UINT16: np.dtype(np.uint16),
    PointField.INT32: np.dtype(np.int32),
    PointField.UINT32: np.dtype(np.uint32),
    PointField.FLOAT32: np.dtype(np.float32),
    PointField.FLOAT64: np.dtype(np.float64),
}
_DTYPE_POINT_FIELDS = {(dt.kind, dt.itemsize): code for code, dt in _POINT_FIELD_DTYPES.items()}

# The node's output cloud: what RViz and MIT-SPARK semantic_inference style consumers read.
LABELLED_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"),
                                 ("label", "<u4"), ("confidence", "<f4")])

_HOST_BIG_ENDIAN = sys.byteorder == "big"


# ---------------------------------------------------------------- stamps

def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    ns = int(ns)
    if ns < 0:
        raise ValueError(f"stamp {ns} ns is negative; ROS times start at 0")
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def make_header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def _to_uint8_array(arr: np.ndarray) -> array.array:
    """One copy of ``arr``'s bytes into the array.array('B') that message byte fields hold.

    Handing the setter an array.array skips rosidl's per-element check of generic sequences.
    """
    out = array.array("B")
    out.frombytes(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return out


# ---------------------------------------------------------------- images

def _unsupported(encoding: str, supported: Sequence[str]) -> ValueError:
    return ValueError(f"unsupported image encoding {encoding!r}; supported: {', '.join(supported)}")


def image_to_numpy(msg: Image) -> np.ndarray:
    """Pixels of ``msg`` as [H, W, C] (C > 1) or [H, W]; a read-only view into ``msg.data`` when possible.

    Row padding (``step`` > width * bytes per pixel) is skipped with strides, not copied. A big-endian
    multi-byte image on a little-endian host (or the reverse) is returned as a native-order copy.
    """
    if msg.encoding not in IMAGE_ENCODINGS:
        raise _unsupported(msg.encoding, tuple(IMAGE_ENCODINGS))
    dtype, channels = IMAGE_ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = w * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(f"image {w}x{h} {msg.encoding}: step {step} is smaller than one row ({row_bytes} bytes)")
    if len(msg.data) < step * h:
        raise ValueError(f"image {w}x{h} {msg.encoding}: data holds {len(msg.data)} bytes, expected "
                         f"step * height = {step * h}")
    buf = np.frombuffer(msg.data, dtype=np.uint8, count=step * h)
    foreign = bool(msg.is_bigendian) != _HOST_BIG_ENDIAN and dtype.itemsize > 1
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    if step % dtype.itemsize == 0:
        # strided view: rows start every `step` bytes, padding is never touched
        pixels = np.ndarray(shape=(h, w, channels), dtype=wire, buffer=buf,
                            strides=(step, channels * dtype.itemsize, dtype.itemsize))
    else:
        # rows not aligned to the element size: gather rows into a contiguous copy
        pixels = buf.reshape(h, step)[:, :row_bytes].copy().view(wire).reshape(h, w, channels)
    if foreign:
        pixels = pixels.astype(dtype)
    pixels.flags.writeable = False  # the caller must not edit the message through the view
    if channels == 1:
        pixels = pixels[:, :, 0]
    return pixels


def numpy_to_image(pixels: np.ndarray,  # [H, W, C] or [H, W]
                   encoding: str, stamp_ns: int = 0, frame_id: str = "") -> Image:
    """An Image message holding ``pixels`` (copied once, native byte order, no row padding)."""
    if encoding not in IMAGE_ENCODINGS:
        raise _unsupported(encoding, tuple(IMAGE_ENCODINGS))
    dtype, channels = IMAGE_ENCODINGS[encoding]
    pixels = np.asarray(pixels)
    expected = "[H, W]" if channels == 1 else f"[H, W, {channels}]"
    shape_ok = (pixels.ndim == 2 and channels == 1) or (pixels.ndim == 3 and pixels.shape[2] == channels)
    if not shape_ok:
        raise ValueError(f"pixels for {encoding} have shape {pixels.shape}, expected {expected}")
    if pixels.dtype != dtype:
        raise ValueError(f"pixels for {encoding} have dtype {pixels.dtype}, expected {dtype}")
    h, w = pixels.shape[:2]
    msg = Image()
    msg.header = make_header(stamp_ns, frame_id)
    msg.height, msg.width = h, w
    msg.encoding = encoding
    msg.is_bigendian = int(_HOST_BIG_ENDIAN)
    msg.step = w * channels * dtype.itemsize
    msg.data = _to_uint8_array(pixels)
    return msg


def color_to_rgb(msg: Image) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an rgb8 or bgr8 image (a view either way; bgr8 is reversed by strides)."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise _unsupported(msg.encoding, COLOR_ENCODINGS)
    pixels = image_to_numpy(msg)
    return pixels[:, :, ::-1] if msg.encoding == "bgr8" else pixels


def depth_to_m(msg: Image) -> np.ndarray:
    """[H, W] float32 metres of a 16UC1 (mm) or 32FC1 (m) depth image; 0 or NaN mark missing readings.

    32FC1 comes back as a view; 16UC1 has to be converted, which is the one copy made.
    """
    if msg.encoding not in DEPTH_ENCODINGS:
        raise _unsupported(msg.encoding, DEPTH_ENCODINGS)
    depth = image_to_numpy(msg)
    return depth_mm_to_m(depth) if msg.encoding == "16UC1" else depth


# ---------------------------------------------------------------- camera info

def camera_info_to_K(msg: CameraInfo) -> Tuple[np.ndarray, int, int]:
    """(K [3, 3] float64, width, height) of a CameraInfo; raises ValueError for an unusable one."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0:
        raise ValueError(f"camera_info has size {w}x{h}, expected a positive width and height")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"camera_info K {K.reshape(-1).tolist()} has no positive finite focal lengths")
    return K, w, h


def make_camera_info(K: np.ndarray,  # [3, 3] pixels
                     width: int, height: int, stamp_ns: int = 0, frame_id: str = "") -> CameraInfo:
    """A CameraInfo for an undistorted pinhole camera (P = [K | 0], R = I)."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K has shape {K.shape}, expected (3, 3)")
    msg = CameraInfo()
    msg.header = make_header(stamp_ns, frame_id)
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = K.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.concatenate([K, np.zeros((3, 1))], axis=1).reshape(-1).tolist()
    return msg


# ---------------------------------------------------------------- point clouds

def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """[N, 3] uint8 -> [N] float32 whose bits are the uint32 0x00RRGGBB (RViz's "RGB8" transformer)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 2 or rgb.shape[1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb has shape {rgb.shape} and dtype {rgb.dtype}, expected [N, 3] uint8")
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2].astype(np.uint32)
    return packed.view(np.float32)


def unpack_rgb(rgb_float: np.ndarray) -> np.ndarray:
    """[N] float32 packed as by :func:`pack_rgb` -> [N, 3] uint8."""
    packed = np.ascontiguousarray(rgb_float, dtype=np.float32).view(np.uint32)
    return np.stack([(packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF], axis=1).astype(np.uint8)


def fields_to_dtype(fields: Sequence[PointField], point_step: int, is_bigendian: bool = False) -> np.dtype:
    """Structured dtype of one point for a PointCloud2 field list (fields with count > 1 become subarrays)."""
    names, formats, offsets = [], [], []
    for i, f in enumerate(fields):
        if f.datatype not in _POINT_FIELD_DTYPES:
            raise ValueError(f"point field {f.name!r} has unknown datatype {f.datatype}")
        base = _POINT_FIELD_DTYPES[f.datatype].newbyteorder(">" if is_bigendian else "<")
        name = f.name or f"unnamed_field_{i}"
        if name in names:
            raise ValueError(f"point field name {name!r} appears twice")
        names.append(name)
        formats.append(base if f.count <= 1 else np.dtype((base, (int(f.count),))))
        offsets.append(int(f.offset))
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(point_step)})
    return dtype


def dtype_to_fields(dtype: np.dtype) -> list:
    """PointField list describing a structured dtype (little-endian scalar or subarray fields)."""
    if dtype.names is None:
        raise ValueError(f"dtype {dtype} is not structured; expected named fields such as x, y, z")
    out = []
    for name in dtype.names:
        field_dtype, offset = dtype.fields[name][:2]
        base, count = (field_dtype.base, int(np.prod(field_dtype.shape))) if field_dtype.shape else (field_dtype, 1)
        code = _DTYPE_POINT_FIELDS.get((base.kind, base.itemsize))
        if code is None:
            raise ValueError(f"field {name!r} has dtype {base}, which PointCloud2 cannot hold")
        if base.byteorder == ">" or (base.byteorder == "=" and _HOST_BIG_ENDIAN):
            raise ValueError(f"field {name!r} is big-endian; convert the array to little-endian first")
        out.append(PointField(name=name, offset=int(offset), datatype=code, count=count))
    return out


def pointcloud2_to_array(msg: PointCloud2) -> np.ndarray:
    """All points of ``msg`` as a structured array [height * width] with one entry per field.

    Any field layout is read (padding between fields or after the last one, foreign byte order, row
    padding of organized clouds). A view into ``msg.data`` unless the byte order or row padding forces
    a copy.
    """
    h, w, point_step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    dtype = fields_to_dtype(msg.fields, point_step, bool(msg.is_bigendian))
    if h * w == 0:
        return np.zeros(0, dtype=dtype)
    if row_step < w * point_step:
        raise ValueError(f"cloud row_step {row_step} is smaller than width * point_step = {w * point_step}")
    if len(msg.data) < row_step * (h - 1) + w * point_step:
        raise ValueError(f"cloud data holds {len(msg.data)} bytes, expected at least "
                         f"{row_step * (h - 1) + w * point_step} for {h}x{w} points of {point_step} bytes")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if row_step == w * point_step:
        points = np.ndarray(shape=(h * w,), dtype=dtype, buffer=buf)
    else:
        points = np.ndarray(shape=(h, w), dtype=dtype, buffer=buf, strides=(row_step, point_step)).reshape(-1)
    if bool(msg.is_bigendian) != _HOST_BIG_ENDIAN:
        points = points.astype(points.dtype.newbyteorder("="))
    return points


def array_to_pointcloud2(points: np.ndarray,  # [N] structured
                         stamp_ns: int = 0, frame_id: str = "", is_dense: Optional[bool] = None) -> PointCloud2:
    """An unorganized (height 1) PointCloud2 of a structured array; its dtype gives the field layout."""
    points = np.asarray(points)
    if points.ndim != 1:
        raise ValueError(f"points has shape {points.shape}, expected [N] structured")
    if _HOST_BIG_ENDIAN:
        raise NotImplementedError("writing point clouds on a big-endian host")
    fields = dtype_to_fields(points.dtype)
    msg = PointCloud2()
    msg.header = make_header(stamp_ns, frame_id)
    msg.height, msg.width = 1, len(points)
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = points.dtype.itemsize
    msg.row_step = points.dtype.itemsize * len(points)
    if is_dense is None:
        floats = [n for n in points.dtype.names if points.dtype[n].base.kind == "f" and n != "rgb"]
        is_dense = all(bool(np.all(np.isfinite(points[n]))) for n in floats)
    msg.is_dense = bool(is_dense)
    msg.data = _to_uint8_array(points)
    return msg


def labelled_cloud(xyz: np.ndarray,  # [N, 3] float metres, frame ``frame_id``
                   rgb: np.ndarray,  # [N, 3] uint8
                   label: np.ndarray,  # [N] int, class index
                   confidence: np.ndarray,  # [N] float in 0..1
                   stamp_ns: int = 0, frame_id: str = "map") -> PointCloud2:
    """The node's output cloud: fields x, y, z, rgb (packed), label (uint32), confidence (float32)."""
    xyz = np.asarray(xyz)
    n = len(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz has shape {xyz.shape}, expected [N, 3]")
    for name, arr, shape in (("rgb", rgb, (n, 3)), ("label", label, (n,)), ("confidence", confidence, (n,))):
        if np.shape(arr) != shape:
            raise ValueError(f"{name} has shape {np.shape(arr)}, expected {shape} to match xyz")
    label = np.asarray(label)
    if n and (label.min() < 0 or label.max() > np.iinfo(np.uint32).max):
        raise ValueError(f"label values must lie in 0..2^32-1, got {label.min()}..{label.max()}")
    points = np.empty(n, dtype=LABELLED_CLOUD_DTYPE)
    points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    points["rgb"] = pack_rgb(np.asarray(rgb))
    points["label"] = label
    points["confidence"] = confidence
    return array_to_pointcloud2(points, stamp_ns, frame_id)


