"""A reader for ScanNet ``.sens`` files: RGB-D frames with poses, decoded on demand (layout in :class:`SensFile`)."""
from __future__ import annotations

import io
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from gcross_core.data.frames import Frame, FrameSet
from gcross_core.errors import InputError
from gcross_core.geometry import is_valid_pose

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_FRAME_HEADER = struct.Struct("<16f4Q")  # camera_to_world, timestamp_color, timestamp_depth, color/depth sizes


@dataclass(frozen=True)
class SensHeader:
    version: int
    sensor_name: str
    intrinsic_color: np.ndarray  # [4, 4]
    extrinsic_color: np.ndarray  # [4, 4]
    intrinsic_depth: np.ndarray  # [4, 4]
    extrinsic_depth: np.ndarray  # [4, 4]
    color_compression: int
    depth_compression: int
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float  # raw depth / depth_shift = metres (1000 for ScanNet)
    num_frames: int


class SensFile(FrameSet):
    """Frames of a ScanNet ``.sens`` file (version 4), decoded on demand.

    Layout, little-endian: version u32; sensor-name length u64 and bytes; intrinsic_color,
    extrinsic_color, intrinsic_depth, extrinsic_depth (4x4 f32 each); color and depth compression types
    (i32 each); color width, height, depth width, height (u32 each); depth_shift f32; frame count u64;
    then per frame camera_to_world (4x4 f32), color and depth timestamps (u64), color and depth byte
    counts (u64), the color bytes (JPEG for ScanNet) and the depth bytes (zlib-compressed uint16).

    Opening scans the frame headers (seeking over the images), so a truncated file fails here. Frames
    with a non-finite or non-rigid pose are skipped and counted.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f".sens file {self.path} is missing")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            self.header = self._read_header(f)
            h = self.header
            poses, where = [], []
            for k in range(h.num_frames):
                raw = f.read(_FRAME_HEADER.size)
                if len(raw) < _FRAME_HEADER.size:
                    raise InputError(f"{self.path} is truncated: frame {k} of {h.num_frames} has no header")
                vals = _FRAME_HEADER.unpack(raw)
                color_bytes, depth_bytes = vals[18], vals[19]
                start = f.tell()
                if start + color_bytes + depth_bytes > size:
                    raise InputError(f"{self.path} is truncated: frame {k} of {h.num_frames} needs "
                                     f"{color_bytes + depth_bytes} bytes, {size - start} left")
                poses.append(np.array(vals[:16], dtype=np.float64).reshape(4, 4))
                where.append((start, color_bytes, depth_bytes))
                f.seek(color_bytes + depth_bytes, 1)
        valid = [k for k, T in enumerate(poses) if is_valid_pose(T)]
        if len(valid) < len(poses):
            log.info("%s: skipped %d of %d frames with invalid poses", self.path, len(poses) - len(valid), len(poses))
        super().__init__([str(k) for k in valid], len(poses) - len(valid))
        self._poses = [poses[k] for k in valid]
        self._where = [where[k] for k in valid]
        self.K_color = h.intrinsic_color[:3, :3].copy()
        self.K_depth = h.intrinsic_depth[:3, :3].copy()

    def _read_header(self, f) -> SensHeader:
        def take(fmt):
            s = struct.Struct("<" + fmt)
            raw = f.read(s.size)
            if len(raw) < s.size:
                raise InputError(f"{self.path} is truncated inside its header")
            return s.unpack(raw)

        (version,) = take("I")
        if version != 4:
            raise InputError(f"{self.path}: .sens version {version}, expected 4")
        (name_len,) = take("Q")
        if name_len > 4096:
            raise InputError(f"{self.path}: sensor name of {name_len} bytes, expected a short string (corrupt header?)")
        name = f.read(name_len)
        if len(name) < name_len:
            raise InputError(f"{self.path} is truncated inside its header")
        name = name.decode("utf-8", "replace")
        mats = [np.array(take("16f"), dtype=np.float64).reshape(4, 4) for _ in range(4)]
        color_comp, depth_comp = take("ii")
        cw, ch, dw, dh = take("4I")
        (shift,) = take("f")
        (num_frames,) = take("Q")
        if color_comp not in COLOR_COMPRESSION or depth_comp not in DEPTH_COMPRESSION:
            raise InputError(f"{self.path}: unknown compression types color={color_comp} depth={depth_comp}, expected "
                             f"color in {sorted(COLOR_COMPRESSION)} and depth in {sorted(DEPTH_COMPRESSION)}")
        if depth_comp == 2:
            raise InputError(f"{self.path}: depth compression occi_ushort is not supported")
        if not (cw and ch and dw and dh) or not shift > 0:
            raise InputError(f"{self.path}: image sizes {cw}x{ch} / {dw}x{dh} and depth_shift {shift} must be > 0")
        return SensHeader(version, name, *mats, color_comp, depth_comp, cw, ch, dw, dh, float(shift), num_frames)

    def cam_to_world(self, i: int) -> np.ndarray:
        return self._poses[i].copy()

    def _load(self, i: int) -> Frame:
        h = self.header
        start, nc, nd = self._where[i]
        with open(self.path, "rb") as f:
            f.seek(start)
            color_raw = f.read(nc)
            depth_raw = f.read(nd)
        fid = self.frame_ids[i]
        if h.color_compression == 0:
            if len(color_raw) != h.color_width * h.color_height * 3:
                raise InputError(f"{self.path} frame {fid}: raw color has {len(color_raw)} bytes, expected "
                                 f"{h.color_width}x{h.color_height}x3")
            color = np.frombuffer(color_raw, np.uint8).reshape(h.color_height, h.color_width, 3).copy()
        else:
            try:
                with Image.open(io.BytesIO(color_raw)) as im:
                    color = np.asarray(im.convert("RGB"))
            except OSError as e:
                raise InputError(f"{self.path} frame {fid}: color image does not decode ({e})") from None
        if color.shape[:2] != (h.color_height, h.color_width):
            raise InputError(f"{self.path} frame {fid}: color image is {color.shape[1]}x{color.shape[0]}, the header "
                             f"says {h.color_width}x{h.color_height}")
        if h.depth_compression == 1:
            try:
                depth_raw = zlib.decompress(depth_raw)
            except zlib.error as e:
                raise InputError(f"{self.path} frame {fid}: depth does not decompress ({e})") from None
        if len(depth_raw) != h.depth_width * h.depth_height * 2:
            raise InputError(f"{self.path} frame {fid}: depth has {len(depth_raw)} bytes, expected "
                             f"{h.depth_width}x{h.depth_height} uint16 = {h.depth_width * h.depth_height * 2}")
        depth = np.frombuffer(depth_raw, dtype="<u2").reshape(h.depth_height, h.depth_width)
        depth_m = (depth.astype(np.float32) / np.float32(h.depth_shift))
        return Frame(color=color, depth_m=depth_m, K_color=self.K_color, K_depth=self.K_depth,
                     cam_to_world=self._poses[i].copy(), frame_id=fid)
