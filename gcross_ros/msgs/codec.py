"""numpy <-> ROS message fields: the one codec behind rclpy messages and rosbags messages.

Reading takes any object with the fields of the message (an rclpy message, a rosbags dataclass):
``data`` may be bytes, ``array.array('B')`` (rclpy) or a uint8 numpy array (rosbags). Reading never
copies when the layout allows it: images and clouds come back as read-only ``np.frombuffer`` views into
``data`` (keep the message alive while using them). A copy is made only to undo a foreign byte order,
to gather rows not aligned to the element size, or to change units (16UC1 millimetres -> metres).

Writing returns the field values as a dict that a backend (:mod:`gcross_ros.msgs.rclpy_msgs`,
:mod:`gcross_ros.msgs.rosbags_msgs`) puts into its own message type; ``data`` is a uint8 view of the
caller's array that the backend copies once into its message.

Conventions follow REP 118 (depth images: 16UC1 millimetres, 32FC1 metres, 0 or NaN = no reading;
65535 mm is no reading too, see :mod:`gcross_core.image`) and what RViz expects of point clouds
(``rgb`` is a float32 field whose bits are the uint32 0x00RRGGBB). Labels travel as uint32; the ignore
label -1 is stored as 0xFFFFFFFF.

Nothing here imports a message package: PointField datatypes are the plain integers of
``sensor_msgs/PointField``.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from gcross_core.errors import InputError, MalformedMessageError
from gcross_core.geometry import is_valid_pose, pose_from_quat, quat_from_pose
from gcross_core.image import check_intrinsics, depth_mm_to_m

NS_PER_S = 1_000_000_000
_HOST_BIG_ENDIAN = sys.byteorder == "big"

# encoding -> (numpy element type, channels)
IMAGE_ENCODINGS: Dict[str, Tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8")
DEPTH_ENCODINGS = ("16UC1", "32FC1")  # what REP 118 allows for depth, and what the node accepts
DEPTH_MM_ENCODINGS = ("16UC1", "mono16")  # uint16 millimetres (mono16: some drivers' name for 16UC1)

# sensor_msgs/PointField datatype codes
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
POINT_FIELD_DTYPES: Dict[int, np.dtype] = {
    INT8: np.dtype(np.int8), UINT8: np.dtype(np.uint8), INT16: np.dtype(np.int16), UINT16: np.dtype(np.uint16),
    INT32: np.dtype(np.int32), UINT32: np.dtype(np.uint32), FLOAT32: np.dtype(np.float32),
    FLOAT64: np.dtype(np.float64),
}
_DTYPE_POINT_FIELDS = {(dt.kind, dt.itemsize): code for code, dt in POINT_FIELD_DTYPES.items()}

# The node's output cloud: what RViz and MIT-SPARK semantic_inference style consumers read.
LABELLED_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"),
                                 ("label", "<u4"), ("confidence", "<f4")])
# The same without confidence: a ground-truth cloud.
LABELLED_POINTS_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<u4")])
IGNORE_LABEL_U32 = 0xFFFFFFFF  # label -1 as uint32 (two's complement)
# Appended to either layout by a segmenter with an instance head (and to ground truth with instances):
# object id per point, 0 = none.
INSTANCE_FIELD = ("instance", "<u4")


# ---------------------------------------------------------------- stamps

def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (anything with ``sec`` and ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_sec_nanosec(ns: int) -> Tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) of a builtin_interfaces/Time."""
    ns = int(ns)
    if ns < 0:
        raise InputError(f"stamp {ns} ns is negative; ROS times start at 0")
    return ns // NS_PER_S, ns % NS_PER_S


def _byte_view(data) -> np.ndarray:
    """The bytes of a message ``data`` field as a flat uint8 array, without copying."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data), dtype=np.uint8)


def _unsupported(encoding: str, supported: Sequence[str]) -> InputError:
    return InputError(f"unsupported image encoding {encoding!r}; supported: {', '.join(supported)}")


# ---------------------------------------------------------------- images

def decode_image(msg) -> np.ndarray:
    """Pixels of an Image as [H, W, C] (C > 1) or [H, W]; a read-only view into ``msg.data`` when possible.

    Row padding (``step`` > width * bytes per pixel) is skipped with strides, not copied. A multi-byte
    image in the other byte order than the host's comes back as a native-order copy.
    """
    if msg.encoding not in IMAGE_ENCODINGS:
        raise _unsupported(msg.encoding, tuple(IMAGE_ENCODINGS))
    dtype, channels = IMAGE_ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = w * channels * dtype.itemsize
    if step < row_bytes:
        raise MalformedMessageError(f"image {w}x{h} {msg.encoding}: step {step} is smaller than one row "
                                    f"({row_bytes} bytes)")
    data = _byte_view(msg.data)
    if data.size < step * h:
        raise MalformedMessageError(f"image {w}x{h} {msg.encoding}: data holds {data.size} bytes, expected "
                                    f"step * height = {step * h}")
    if data.size - step * h >= step:
        # Less than one row beyond step * height is trailing padding of a buffer allocated in whole
        # aligned blocks; a whole row or more means step or height is wrong, and rows would be misread.
        raise MalformedMessageError(f"image {w}x{h} {msg.encoding}: data holds {data.size} bytes, "
                                    f"{data.size - step * h} more than step * height = {step * h} (at most "
                                    f"{step - 1} bytes of trailing padding are accepted): step or height is wrong")
    buf = data[: step * h]
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
    return pixels[:, :, 0] if channels == 1 else pixels


def decode_color_rgb(msg) -> np.ndarray:  # -> [H, W, 3] uint8 RGB
    """RGB of an rgb8 or bgr8 image (a view either way; bgr8 is reversed by strides)."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise _unsupported(msg.encoding, COLOR_ENCODINGS)
    pixels = decode_image(msg)
    return pixels[:, :, ::-1] if msg.encoding == "bgr8" else pixels


def decode_depth_m(msg) -> np.ndarray:  # -> [H, W] float32 metres
    """Metres of a 16UC1/mono16 (mm) or 32FC1 (m) depth image; 0 or NaN mark missing readings.

    32FC1 comes back as a view; millimetres have to be converted (0 and 65535 become 0), which is the
    one copy made.
    """
    supported = DEPTH_MM_ENCODINGS + ("32FC1",)
    if msg.encoding not in supported:
        raise _unsupported(msg.encoding, DEPTH_ENCODINGS + ("mono16",))
    depth = decode_image(msg)
    return depth_mm_to_m(depth) if msg.encoding in DEPTH_MM_ENCODINGS else depth


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# compressed_depth_image_transport's ConfigHeader before the PNG: int32 format (0: inverse depth) and two
# float32 quantisation terms A, B; a 32FC1 image is stored as uint16 inv = A / depth + B (0: no reading)
_COMPRESSED_DEPTH_HEADER = np.dtype([("format", "<i4"), ("quant_a", "<f4"), ("quant_b", "<f4")])
COMPRESSED_COLOR_FORMATS = ("jpeg", "png")
COMPRESSED_DEPTH_ENCODINGS = ("16UC1", "32FC1")


def _decode_compressed(data: np.ndarray, fmt: str, what: str) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            return np.asarray(im.convert("RGB") if what == "color" else im)
    except (UnidentifiedImageError, OSError, ValueError) as e:  # a corrupt or truncated payload
        raise MalformedMessageError(f"compressed {what} image (format {fmt!r}, {data.size} bytes) cannot be "
                                    f"decoded: {e}") from e


def decode_compressed_color_rgb(msg) -> np.ndarray:  # -> [H, W, 3] uint8 RGB
    """RGB of a sensor_msgs/CompressedImage (image_transport ``compressed``: JPEG or PNG)."""
    return _decode_compressed(_byte_view(msg.data), str(msg.format), "color")


def decode_compressed_depth_m(msg) -> np.ndarray:  # -> [H, W] float32 metres, NaN or 0 = no reading
    """Metres of a depth CompressedImage: image_transport ``compressedDepth`` (a 12-byte header, then a
    16-bit PNG: millimetres for 16UC1, quantised inverse depth for 32FC1), or a plain 16-bit PNG of
    millimetres. The ``rvl`` variant of compressedDepth is not supported."""
    data, fmt = _byte_view(msg.data), str(msg.format)
    if "rvl" in fmt.lower():
        raise InputError(f"compressed depth format {fmt!r} (RVL) is not supported; publish compressedDepth "
                         "with png (the default of compressed_depth_image_transport) or raw depth images")
    raw = data.tobytes()
    header = None
    if raw[:8] != _PNG_SIGNATURE:
        size = _COMPRESSED_DEPTH_HEADER.itemsize
        if len(raw) < size + 8 or raw[size:size + 8] != _PNG_SIGNATURE:
            raise MalformedMessageError(f"compressed depth image (format {fmt!r}, {len(raw)} bytes) is neither a "
                                        "compressedDepth PNG (12-byte header, then PNG) nor a 16-bit PNG")
        header = np.frombuffer(raw[:size], _COMPRESSED_DEPTH_HEADER)[0]
        data = data[size:]
    pixels = _decode_compressed(data, fmt, "depth")
    if pixels.ndim != 2 or pixels.dtype not in (np.uint16, np.int32, np.uint32, np.int64):
        raise InputError(f"compressed depth image (format {fmt!r}) decodes to {pixels.dtype} {pixels.shape}, "
                         "expected a one-channel 16-bit PNG")
    pixels = pixels.astype(np.uint16)
    if not fmt.split(";")[0].strip().upper().startswith("32FC1"):
        return depth_mm_to_m(pixels)
    if header is None:
        raise InputError(f"compressed depth format {fmt!r}: a 32FC1 image needs compressedDepth's quantisation "
                         "header, and this payload has none")
    a, b = float(header["quant_a"]), float(header["quant_b"])
    if header["format"] != 0 or not (np.isfinite(a) and np.isfinite(b)) or a <= 0:
        raise InputError(f"compressed depth format {fmt!r}: unusable inverse-depth header (format "
                         f"{int(header['format'])}, A={a:g}, B={b:g})")
    inv = pixels.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.float32(a) / (inv - np.float32(b))
    depth[(pixels == 0) | ~(depth > 0)] = np.nan
    return depth


def encode_compressed_color(rgb: np.ndarray,  # [H, W, 3] uint8 RGB
                            fmt: str = "jpeg", quality: int = 95) -> dict:
    """CompressedImage fields (format, data) as image_transport's ``compressed`` publisher writes them."""
    import io

    from PIL import Image

    if fmt not in COMPRESSED_COLOR_FORMATS:
        raise _unsupported(fmt, COMPRESSED_COLOR_FORMATS)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"colour for a compressed image has {rgb.dtype} {rgb.shape}, expected uint8 [H, W, 3]")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG" if fmt == "jpeg" else "PNG",
                              **({"quality": int(quality)} if fmt == "jpeg" else {}))
    return dict(format=f"rgb8; {fmt} compressed bgr8", data=np.frombuffer(buf.getvalue(), np.uint8))


def encode_compressed_depth(depth_m: np.ndarray,  # [H, W] float32 metres, <= 0 or NaN = no reading
                            encoding: str = "16UC1", depth_max_m: float = 10.0,
                            quantization: float = 100.0) -> dict:
    """CompressedImage fields (format, data) as compressed_depth_image_transport writes them: the 12-byte
    header, then a 16-bit PNG of millimetres (16UC1) or of quantised inverse depth (32FC1, with the
    transport's ``depth_max`` and ``depth_quantization``)."""
    import io

    from PIL import Image

    if encoding not in COMPRESSED_DEPTH_ENCODINGS:
        raise _unsupported(encoding, COMPRESSED_DEPTH_ENCODINGS)
    d = np.asarray(depth_m, np.float32)
    if d.ndim != 2:
        raise InputError(f"depth for a compressed image has shape {d.shape}, expected [H, W]")
    header = np.zeros(1, _COMPRESSED_DEPTH_HEADER)
    valid = np.isfinite(d) & (d > 0)
    if encoding == "16UC1":
        pixels = np.where(valid, np.clip(np.round(d * 1000.0), 0, 65534), 0).astype(np.uint16)
    else:
        a = quantization * (quantization + 1.0)
        b = 1.0 - a / depth_max_m
        header["quant_a"], header["quant_b"] = a, b
        keep = valid & (d < depth_max_m)
        with np.errstate(divide="ignore", invalid="ignore"):
            pixels = np.where(keep, a / d + b, 0).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    data = np.frombuffer(header.tobytes() + buf.getvalue(), np.uint8)
    return dict(format=f"{encoding}; compressedDepth png", data=data)


def encode_image(pixels: np.ndarray,  # [H, W, C] or [H, W]
                 encoding: str) -> dict:
    """Image fields (height, width, encoding, is_bigendian, step, data) of ``pixels``: host order, no padding."""
    if encoding not in IMAGE_ENCODINGS:
        raise _unsupported(encoding, tuple(IMAGE_ENCODINGS))
    dtype, channels = IMAGE_ENCODINGS[encoding]
    pixels = np.asarray(pixels)
    expected = "[H, W]" if channels == 1 else f"[H, W, {channels}]"
    shape_ok = (pixels.ndim == 2 and channels == 1) or (pixels.ndim == 3 and pixels.shape[2] == channels)
    if not shape_ok:
        raise InputError(f"pixels for {encoding} have shape {pixels.shape}, expected {expected}")
    if pixels.dtype != dtype:
        raise InputError(f"pixels for {encoding} have dtype {pixels.dtype}, expected {dtype}")
    h, w = pixels.shape[:2]
    return dict(height=h, width=w, encoding=encoding, is_bigendian=int(_HOST_BIG_ENDIAN),
                step=w * channels * dtype.itemsize, data=_bytes_of(pixels))


def _bytes_of(arr: np.ndarray) -> np.ndarray:
    """A flat uint8 view of ``arr`` (a copy only when it is not C-contiguous)."""
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


# ---------------------------------------------------------------- camera info

def camera_info_to_K(msg) -> Tuple[np.ndarray, int, int]:
    """(K [3, 3] float64, width, height) of a CameraInfo; InputError for an unusable one."""
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0:
        raise InputError(f"camera_info has size {w}x{h}, expected a positive width and height")
    K = check_intrinsics(np.asarray(msg.k, dtype=np.float64).reshape(3, 3), "camera_info K")
    return K, w, h


def encode_camera_info(K: np.ndarray,  # [3, 3] pixels
                       width: int, height: int) -> dict:
    """CameraInfo fields of an undistorted pinhole camera (plumb_bob, D = 0, R = I, P = [K | 0]) as lists."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise InputError(f"K has shape {K.shape}, expected (3, 3)")
    P = np.concatenate([K, np.zeros((3, 1))], axis=1)
    return dict(width=int(width), height=int(height), distortion_model="plumb_bob", d=[0.0] * 5,
                k=K.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(), p=P.reshape(-1).tolist())


# ---------------------------------------------------------------- poses

def pose_to_matrix(position, orientation) -> np.ndarray:  # -> [4, 4] float64
    """4x4 from a Point/Vector3 (x, y, z) and a Quaternion (x, y, z, w), e.g. a Pose or a Transform.

    The quaternion is normalised; a zero or non-finite one, or a non-finite position, is an InputError.
    """
    q = np.array([orientation.w, orientation.x, orientation.y, orientation.z], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-6:
        raise InputError(f"pose orientation {q.tolist()} is not a usable quaternion (w, x, y, z)")
    T = pose_from_quat([position.x, position.y, position.z], q / norm)
    if not is_valid_pose(T):
        raise InputError(f"pose position {T[:3, 3].tolist()} is not finite")
    return T


def matrix_to_pose(T: np.ndarray) -> Tuple[List[float], List[float]]:
    """([x, y, z], [qx, qy, qz, qw]) of a rigid 4x4, the quaternion with w >= 0 (one sign, reproducible)."""
    t, q = quat_from_pose(np.asarray(T, np.float64))
    q = q / np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    return [float(v) for v in t], [float(q[1]), float(q[2]), float(q[3]), float(q[0])]


# ---------------------------------------------------------------- point clouds

def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """[N, 3] uint8 -> [N] float32 whose bits are the uint32 0x00RRGGBB (RViz's "RGB8" transformer)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 2 or rgb.shape[1] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"rgb has shape {rgb.shape} and dtype {rgb.dtype}, expected [N, 3] uint8")
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2].astype(np.uint32)
    return packed.view(np.float32)


def unpack_rgb(rgb_float: np.ndarray) -> np.ndarray:
    """[N] float32 packed as by :func:`pack_rgb` -> [N, 3] uint8."""
    packed = np.ascontiguousarray(rgb_float, dtype=np.float32).view(np.uint32)
    return np.stack([(packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF], axis=1).astype(np.uint8)


def fields_to_dtype(fields, point_step: int, is_bigendian: bool = False) -> np.dtype:
    """Structured dtype of one point for a PointField list (fields with count > 1 become subarrays)."""
    names, formats, offsets = [], [], []
    for i, f in enumerate(fields):
        if int(f.datatype) not in POINT_FIELD_DTYPES:
            raise InputError(f"point field {f.name!r} has unknown datatype {f.datatype}")
        base = POINT_FIELD_DTYPES[int(f.datatype)].newbyteorder(">" if is_bigendian else "<")
        name = f.name or f"unnamed_field_{i}"
        if name in names:
            raise InputError(f"point field name {name!r} appears twice")
        names.append(name)
        formats.append(base if f.count <= 1 else np.dtype((base, (int(f.count),))))
        offsets.append(int(f.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(point_step)})


def dtype_to_fields(dtype: np.dtype) -> List[dict]:
    """PointField values (name, offset, datatype, count) describing a little-endian structured dtype."""
    if dtype.names is None:
        raise InputError(f"dtype {dtype} is not structured; expected named fields such as x, y, z")
    out = []
    for name in dtype.names:
        field_dtype, offset = dtype.fields[name][:2]
        base, count = (field_dtype.base, int(np.prod(field_dtype.shape))) if field_dtype.shape else (field_dtype, 1)
        code = _DTYPE_POINT_FIELDS.get((base.kind, base.itemsize))
        if code is None:
            raise InputError(f"field {name!r} has dtype {base}, which PointCloud2 cannot hold")
        if base.byteorder == ">" or (base.byteorder == "=" and _HOST_BIG_ENDIAN):
            raise InputError(f"field {name!r} is big-endian; convert the array to little-endian first")
        out.append(dict(name=name, offset=int(offset), datatype=code, count=count))
    return out


def decode_cloud(msg) -> np.ndarray:  # -> [height * width] structured
    """All points of a PointCloud2 as a structured array with one entry per field.

    Any field layout is read (padding between fields or after the last one, foreign byte order, row
    padding of organized clouds). A view into ``msg.data`` unless the byte order or row padding forces
    a copy.
    """
    h, w, point_step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    dtype = fields_to_dtype(msg.fields, point_step, bool(msg.is_bigendian))
    if h * w == 0:
        return np.zeros(0, dtype=dtype)
    if row_step < w * point_step:
        raise InputError(f"cloud row_step {row_step} is smaller than width * point_step = {w * point_step}")
    buf = _byte_view(msg.data)
    if buf.size < row_step * (h - 1) + w * point_step:
        raise InputError(f"cloud data holds {buf.size} bytes, expected at least "
                         f"{row_step * (h - 1) + w * point_step} for {h}x{w} points of {point_step} bytes")
    if row_step == w * point_step:
        points = np.ndarray(shape=(h * w,), dtype=dtype, buffer=buf)
    else:
        points = np.ndarray(shape=(h, w), dtype=dtype, buffer=buf, strides=(row_step, point_step)).reshape(-1)
    if bool(msg.is_bigendian) != _HOST_BIG_ENDIAN:
        points = points.astype(points.dtype.newbyteorder("="))
    return points


def encode_cloud(points: np.ndarray,  # [N] structured
                 is_dense: Optional[bool] = None) -> dict:
    """Fields of an unorganized (height 1) PointCloud2; the dtype gives the layout, ``fields`` are dicts."""
    points = np.asarray(points)
    if points.ndim != 1:
        raise InputError(f"points has shape {points.shape}, expected [N] structured")
    if _HOST_BIG_ENDIAN:
        raise NotImplementedError("writing point clouds on a big-endian host")
    fields = dtype_to_fields(points.dtype)
    if is_dense is None:
        floats = [n for n in points.dtype.names if points.dtype[n].base.kind == "f" and n != "rgb"]
        is_dense = all(bool(np.all(np.isfinite(points[n]))) for n in floats)
    return dict(height=1, width=len(points), fields=fields, is_bigendian=False,
                point_step=points.dtype.itemsize, row_step=points.dtype.itemsize * len(points),
                is_dense=bool(is_dense), data=_bytes_of(points))


def labelled_points(xyz: np.ndarray,  # [N, 3] float metres
                    rgb: np.ndarray,  # [N, 3] uint8
                    label: np.ndarray,  # [N] int class index, -1 = ignore
                    confidence: Optional[np.ndarray] = None,  # [N] float in 0..1
                    instance: Optional[np.ndarray] = None,  # [N] int object id, 0 = none
                    ) -> np.ndarray:  # [N] LABELLED_CLOUD_DTYPE, or LABELLED_POINTS_DTYPE without confidence
    """Points of a labelled cloud: x, y, z, rgb (packed), label (uint32, -1 -> 0xFFFFFFFF), [confidence],
    [instance (uint32, 0 = none)]."""
    xyz = np.asarray(xyz)
    n = len(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise InputError(f"xyz has shape {xyz.shape}, expected [N, 3]")
    checks = [("rgb", rgb, (n, 3)), ("label", label, (n,))]
    if confidence is not None:
        checks.append(("confidence", confidence, (n,)))
    if instance is not None:
        checks.append(("instance", instance, (n,)))
    for name, arr, shape in checks:
        if np.shape(arr) != shape:
            raise InputError(f"{name} has shape {np.shape(arr)}, expected {shape} to match xyz")
    label = np.asarray(label).astype(np.int64)
    if n and (label.min() < -1 or label.max() > np.iinfo(np.uint32).max):
        raise InputError(f"label values must lie in -1..2^32-1, got {label.min()}..{label.max()}")
    dtype = LABELLED_POINTS_DTYPE if confidence is None else LABELLED_CLOUD_DTYPE
    if instance is not None:
        instance = np.asarray(instance).astype(np.int64)
        if n and (instance.min() < 0 or instance.max() > np.iinfo(np.uint32).max):
            raise InputError(f"instance ids must lie in 0..2^32-1 (0 = none), got {instance.min()}..{instance.max()}")
        dtype = np.dtype(dtype.descr + [INSTANCE_FIELD])
    points = np.empty(n, dtype=dtype)
    points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    points["rgb"] = pack_rgb(rgb)
    points["label"] = np.where(label < 0, IGNORE_LABEL_U32, label).astype(np.uint32)
    if confidence is not None:
        points["confidence"] = confidence
    if instance is not None:
        points["instance"] = instance.astype(np.uint32)
    return points


def instance_ids(points: np.ndarray) -> Optional[np.ndarray]:  # -> [N] int64 object id, 0 = none; None: no field
    """The ``instance`` field of a labelled cloud, or None when it has none."""
    if "instance" not in (points.dtype.names or ()):
        return None
    return points["instance"].astype(np.int64)


def split_labelled_points(points: np.ndarray,  # [N] structured with x, y, z, label (rgb optional)
                          ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz [N, 3] float32, rgb [N, 3] uint8 (zeros without an rgb field), label [N] int64, -1 = ignore)."""
    names = points.dtype.names or ()
    missing = [n for n in ("x", "y", "z", "label") if n not in names]
    if missing:
        raise InputError(f"labelled cloud has fields {list(names)}, lacks {missing}")
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1).astype(np.float32)
    rgb = unpack_rgb(points["rgb"]) if "rgb" in names else np.zeros((len(xyz), 3), np.uint8)
    label = points["label"].astype(np.uint32).view(np.int32).astype(np.int64)
    return xyz, rgb, label
