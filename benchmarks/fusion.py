"""RGB-D fusion speed and memory: gcross_core.mapping.fusion.VoxelMap beside Open3D's TSDF integration and
its point-cloud pipeline.

Frames come from a ScanNet SensReader export folder (``color/<i>.jpg|png``, ``depth/<i>.png`` uint16 mm,
``pose/<i>.txt`` camera-to-world, ``intrinsic/intrinsic_depth.txt``) given with ``--frames``, or, without
it, from a synthetic room rendered here (a box room with a cupboard, seen from a camera circling inside).
All frames are decoded before timing, so both pipelines are timed on fusion alone.

Open3D side (``open3d-cpu``, imported lazily, skipped with a message if absent; it is not a dependency of
the project), with the same frames, depth truncation and voxel size, per frame:
- TSDF: ``pipelines.integration.ScalableTSDFVolume`` (RGB8 colour, truncation 3 voxels) ``integrate`` of
  the RGBDImage, Open3D's fastest CPU volume integration (its tensor VoxelBlockGrid is slower on CPU);
- points: RGBDImage.create_from_color_and_depth -> PointCloud.create_from_rgbd_image -> accumulate (+=)
  -> voxel_down_sample(voxel_size).
VoxelMap keeps more per voxel (mean position and colour, normal, count, last-seen, class probabilities),
and a TSDF keeps a signed distance, weight and colour for every voxel within the truncation band.

    python -m benchmarks.fusion --frames DIR       # real frames, 100 timed, RSS after 100, 500, 1000
    python -m benchmarks.fusion                    # synthetic frames
    python -m benchmarks.fusion --quick            # 20 frames, one repeat, RSS after 20 and 100

``fusion_figures`` returns the same figures as a dict for other benchmarks (``from benchmarks.fusion import
fusion_figures, format_figures, load_frames, synthetic_frames``). Wall-clock and CPU time are both
reported: on a shared, loaded machine the CPU time (all threads of the process) is the steadier comparison.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from gcross_core.image import depth_m_to_mm, depth_mm_to_m
from gcross_core.mapping.fusion import VoxelMap


class Frame(NamedTuple):
    color: np.ndarray  # [H, W, 3] uint8 RGB, registered to depth
    depth_m: np.ndarray  # [H, W] float32 metres, 0 = invalid (read from millimetres once, in load_frames)
    K: np.ndarray  # [3, 3] depth intrinsics
    cam_to_world: np.ndarray  # [4, 4]


# ---------------------------------------------------------------- frames

def load_frames(folder: str, limit: Optional[int] = None) -> List[Frame]:
    """Frames of a SensReader export (``folder`` or ``folder/frames``), sorted by index.

    Frames with a non-finite pose (ScanNet marks lost tracking with -inf) are skipped. Colour images of
    another size than the depth (ScanNet: 1296x968 vs 640x480) are resized to the depth size.
    """
    from PIL import Image

    root = Path(folder)
    if not (root / "depth").is_dir() and (root / "frames" / "depth").is_dir():
        root = root / "frames"
    for sub in ("color", "depth", "pose", "intrinsic"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root} has no {sub}/ folder (expected the SensReader export layout)")
    K = np.loadtxt(root / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
    indices = sorted(int(m.group(1)) for p in (root / "depth").iterdir()
                     if (m := re.fullmatch(r"(\d+)\.png", p.name)))
    frames: List[Frame] = []
    for i in indices:
        pose = np.loadtxt(root / "pose" / f"{i}.txt")
        if not np.all(np.isfinite(pose)):
            continue
        depth = np.asarray(Image.open(root / "depth" / f"{i}.png"))
        depth_m = depth_mm_to_m(depth.astype(np.uint16))
        color_path = next((root / "color" / f"{i}{ext}" for ext in (".jpg", ".png")
                           if (root / "color" / f"{i}{ext}").exists()), None)
        if color_path is None:
            continue
        img = Image.open(color_path).convert("RGB")
        if img.size != (depth_m.shape[1], depth_m.shape[0]):
            img = img.resize((depth_m.shape[1], depth_m.shape[0]), Image.BILINEAR)
        frames.append(Frame(np.ascontiguousarray(np.asarray(img)), depth_m, K, pose))
        if limit is not None and len(frames) >= limit:
            break
    if not frames:
        raise FileNotFoundError(f"no usable frames in {root}")
    return frames


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cam_to_world of an OpenCV camera (x right, y down, z forward) at eye looking at target, z up world."""
    fwd = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, fwd], axis=1)
    T[:3, 3] = eye
    return T


def synthetic_frames(num_frames: int, width: int = 640, height: int = 480, seed: int = 0) -> List[Frame]:
    """Ray-cast frames of a 6 x 5 x 3 m room with a cupboard, from a camera circling the room centre.

    Depth gets 0.2 % multiplicative noise and 3 % dropped pixels, roughly like a structured-light sensor,
    and is quantised to millimetres as such a sensor's 16UC1 images are.
    """
    rng = np.random.default_rng(seed)
    room_lo, room_hi = np.zeros(3), np.array([6.0, 5.0, 3.0])
    box_lo, box_hi = np.array([4.0, 3.0, 0.0]), np.array([4.6, 4.5, 2.0])
    f = 0.9 * width
    K = np.array([[f, 0, width / 2 - 0.5], [0, f, height / 2 - 0.5], [0, 0, 1.0]])
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays_cam = np.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, np.ones_like(u)], axis=-1).reshape(-1, 3)
    frames = []
    for k in range(num_frames):
        a = 2 * np.pi * k / max(num_frames, 1)
        eye = np.array([3.0 + 0.8 * np.cos(a), 2.5 + 0.6 * np.sin(a), 1.5])
        target = eye + np.array([np.cos(a + 1.0), np.sin(a + 1.0), -0.3])
        T = _look_at(eye, target)
        d = rays_cam @ T[:3, :3].T  # world directions with camera-z component 1: ray parameter = depth
        with np.errstate(divide="ignore", invalid="ignore"):
            t_room = np.min(np.where(d > 0, (room_hi - eye) / d, (room_lo - eye) / d), axis=1)
            t0, t1 = (box_lo - eye) / d, (box_hi - eye) / d
            t_near = np.max(np.minimum(t0, t1), axis=1)
            t_far = np.min(np.maximum(t0, t1), axis=1)
        box_hit = (t_near <= t_far) & (t_near > 0)
        t = np.where(box_hit & (t_near < t_room), t_near, t_room)
        hit = eye + t[:, None] * d
        checker = (np.floor(hit[:, 0] / 0.25) + np.floor(hit[:, 1] / 0.25) + np.floor(hit[:, 2] / 0.25)) % 2
        base = np.where(box_hit[:, None] & (t_near < t_room)[:, None], [150, 90, 40], [200, 200, 190])
        color = np.clip(base * (0.75 + 0.25 * checker[:, None]), 0, 255).astype(np.uint8)
        depth_m = t * (1 + 0.002 * rng.standard_normal(t.shape))
        depth_m[rng.random(t.shape) < 0.03] = 0
        depth_m = depth_mm_to_m(depth_m_to_mm(depth_m.reshape(height, width)))
        frames.append(Frame(color.reshape(height, width, 3), depth_m, K, T))
    return frames


# ---------------------------------------------------------------- measurements

def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _run_voxel_map(frames: Sequence[Frame], voxel_size_m: float, max_voxels: int, max_depth_m: float):
    vmap = VoxelMap(voxel_size_m, max_voxels, num_classes=20, max_depth_m=max_depth_m)
    t0, c0 = time.perf_counter(), time.process_time()
    for fr in frames:
        vmap.integrate(fr.color, fr.depth_m, fr.K, fr.cam_to_world)
    return time.perf_counter() - t0, time.process_time() - c0, len(vmap)


def _open3d_rgbd(o3d, fr: Frame, w: int, h: int, max_depth_m: float):
    """Open3D's intrinsics and RGBD image of one frame (inside the timed loops, as a pipeline would)."""
    K = fr.K
    intr = o3d.camera.PinholeCameraIntrinsic(w, h, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
        o3d.geometry.Image(fr.color), o3d.geometry.Image(fr.depth_m), depth_scale=1.0,
        depth_trunc=max_depth_m, convert_rgb_to_intensity=False)
    return intr, rgbd


def _run_open3d(o3d, frames: Sequence[Frame], voxel_size_m: float, max_depth_m: float):
    h, w = frames[0].depth_m.shape
    cloud = o3d.geometry.PointCloud()
    t0, c0 = time.perf_counter(), time.process_time()
    for fr in frames:
        intr, rgbd = _open3d_rgbd(o3d, fr, w, h, max_depth_m)
        cloud += o3d.geometry.PointCloud.create_from_rgbd_image(rgbd, intr, np.linalg.inv(fr.cam_to_world))
        cloud = cloud.voxel_down_sample(voxel_size_m)
    return time.perf_counter() - t0, time.process_time() - c0, len(cloud.points)


def _run_open3d_tsdf(o3d, frames: Sequence[Frame], voxel_size_m: float, max_depth_m: float):
    h, w = frames[0].depth_m.shape
    integration = o3d.pipelines.integration
    volume = integration.ScalableTSDFVolume(voxel_length=voxel_size_m, sdf_trunc=3 * voxel_size_m,
                                            color_type=integration.TSDFVolumeColorType.RGB8)
    t0, c0 = time.perf_counter(), time.process_time()
    for fr in frames:
        intr, rgbd = _open3d_rgbd(o3d, fr, w, h, max_depth_m)
        volume.integrate(rgbd, intr, np.linalg.inv(fr.cam_to_world))
    return time.perf_counter() - t0, time.process_time() - c0


def _import_open3d():
    try:
        import open3d  # noqa: F401  (optional: pip install open3d-cpu, needs libusb-1.0-0)
        return open3d
    except (ImportError, OSError) as e:
        print(f"open3d unavailable ({e}); skipping the side-by-side "
              "(pip install open3d-cpu; apt-get install libusb-1.0-0)")
        return None


def time_fusion(frames: Sequence[Frame], voxel_size_m: float = 0.02, max_voxels: int = 1_000_000,
                max_depth_m: float = 5.0, repeats: int = 3, with_open3d: bool = True) -> Dict[str, float]:
    """Median wall-clock and CPU ms/frame over ``repeats`` passes of all frames, VoxelMap, Open3D's TSDF and
    Open3D's point pipeline interleaved.

    Interleaving makes both see the same background load on a shared machine; CPU time (all threads of
    the process) is the steadier figure there. Each pass starts from an empty map; one short pass of each
    runs first as a warm-up.
    """
    o3d = _import_open3d() if with_open3d else None
    warm = frames[: min(3, len(frames))]
    _run_voxel_map(warm, voxel_size_m, max_voxels, max_depth_m)
    if o3d is not None:
        _run_open3d(o3d, warm, voxel_size_m, max_depth_m)
        _run_open3d_tsdf(o3d, warm, voxel_size_m, max_depth_m)
    ours, theirs, tsdf = [], [], []
    out: Dict[str, float] = {"frames": len(frames), "width": frames[0].depth_m.shape[1],
                             "height": frames[0].depth_m.shape[0], "voxel_size_m": voxel_size_m}
    ms = 1e3 / len(frames)
    for _ in range(repeats):
        wall, cpu, out["voxels"] = _run_voxel_map(frames, voxel_size_m, max_voxels, max_depth_m)
        ours.append((wall * ms, cpu * ms))
        if o3d is not None:
            wall, cpu = _run_open3d_tsdf(o3d, frames, voxel_size_m, max_depth_m)
            tsdf.append((wall * ms, cpu * ms))
            wall, cpu, out["open3d_points"] = _run_open3d(o3d, frames, voxel_size_m, max_depth_m)
            theirs.append((wall * ms, cpu * ms))
    out["fusion_ms_per_frame"], out["fusion_cpu_ms_per_frame"] = (float(x) for x in np.median(ours, axis=0))
    if tsdf:
        out["tsdf_ms_per_frame"], out["tsdf_cpu_ms_per_frame"] = (float(x) for x in np.median(tsdf, axis=0))
        # VoxelMap's time in units of the TSDF's: the "within 2x of Open3D's TSDF" figure.
        out["time_vs_tsdf"] = out["fusion_ms_per_frame"] / out["tsdf_ms_per_frame"]
        out["cpu_time_vs_tsdf"] = out["fusion_cpu_ms_per_frame"] / out["tsdf_cpu_ms_per_frame"]
    if theirs:
        out["open3d_ms_per_frame"], out["open3d_cpu_ms_per_frame"] = (float(x) for x in np.median(theirs, axis=0))
        out["speedup_vs_open3d"] = out["open3d_ms_per_frame"] / out["fusion_ms_per_frame"]
        out["cpu_speedup_vs_open3d"] = out["open3d_cpu_ms_per_frame"] / out["fusion_cpu_ms_per_frame"]
    return out


def rss_over_frames(frames: Sequence[Frame], checkpoints: Sequence[int] = (100, 500, 1000),
                    voxel_size_m: float = 0.02, max_voxels: int = 200_000,
                    max_depth_m: float = 5.0) -> Dict[str, float]:
    """Process RSS (MB) after each checkpoint frame count, looping over ``frames``; also map size and evictions.

    The frames are already in memory before the first reading, so growth is the map's (bounded by
    max_voxels) plus allocator slack.
    """
    fusion_log = logging.getLogger("gcross_core.mapping.fusion")
    level = fusion_log.level
    fusion_log.setLevel(logging.ERROR)  # eviction warnings would flood the output; counted below instead
    try:
        vmap = VoxelMap(voxel_size_m, max_voxels, num_classes=20, max_depth_m=max_depth_m)
        out: Dict[str, float] = {"rss_before_mb": _rss_mb(), "max_voxels": max_voxels}
        evictions = 0
        for k in range(1, max(checkpoints) + 1):
            fr = frames[(k - 1) % len(frames)]
            evictions += vmap.integrate(fr.color, fr.depth_m, fr.K, fr.cam_to_world).evicted > 0
            if k in checkpoints:
                out[f"rss_after_{k}_mb"] = _rss_mb()
                out[f"voxels_after_{k}"] = len(vmap)
        out["eviction_events"] = evictions
        out["evicted_voxels"] = vmap.evicted_total
        return out
    finally:
        fusion_log.setLevel(level)


def fusion_figures(frames: Sequence[Frame], voxel_size_m: float = 0.02, timed_frames: int = 100,
                   repeats: int = 3, rss_checkpoints: Sequence[int] = (100, 500, 1000),
                   max_voxels: int = 200_000, max_depth_m: float = 5.0,
                   with_open3d: bool = True) -> Dict[str, float]:
    """All figures of this benchmark as one dict (timing on the first ``timed_frames`` frames)."""
    out = time_fusion(frames[:timed_frames], voxel_size_m, max_voxels=max(max_voxels, 1_000_000),
                      max_depth_m=max_depth_m, repeats=repeats, with_open3d=with_open3d)
    out.update(rss_over_frames(frames, rss_checkpoints, voxel_size_m, max_voxels, max_depth_m))
    return out


def format_figures(fig: Dict[str, float]) -> List[str]:
    lines = [f"fusion {fig['width']}x{fig['height']}, voxel {fig['voxel_size_m'] * 100:.0f} cm, "
             f"{fig['frames']} frames: {fig['fusion_ms_per_frame']:.1f} ms/frame wall, "
             f"{fig['fusion_cpu_ms_per_frame']:.1f} ms CPU ({fig['voxels']} voxels)"]
    if "tsdf_ms_per_frame" in fig:
        lines.append(f"open3d ScalableTSDFVolume.integrate: {fig['tsdf_ms_per_frame']:.1f} ms/frame wall, "
                     f"{fig['tsdf_cpu_ms_per_frame']:.1f} ms CPU; VoxelMap takes {fig['time_vs_tsdf']:.2f}x its "
                     f"time (wall), {fig['cpu_time_vs_tsdf']:.2f}x (CPU)")
    if "open3d_ms_per_frame" in fig:
        lines.append(f"open3d RGBD->PointCloud->accumulate->voxel_down_sample: {fig['open3d_ms_per_frame']:.1f} "
                     f"ms/frame wall, {fig['open3d_cpu_ms_per_frame']:.1f} ms CPU ({fig['open3d_points']} "
                     f"points); VoxelMap is {fig['speedup_vs_open3d']:.2f}x as fast (wall), "
                     f"{fig['cpu_speedup_vs_open3d']:.2f}x (CPU)")
    rss = [k for k in fig if k.startswith("rss_after_")]
    if rss:
        parts = [f"{k[len('rss_after_'):-3]} frames {fig[k]:.0f} MB "
                 f"({fig['voxels_after_' + k[len('rss_after_'):-3]]} voxels)" for k in rss]
        lines.append(f"RSS (max_voxels={fig['max_voxels']}): before {fig['rss_before_mb']:.0f} MB, "
                     + ", ".join(parts) + f"; {fig['eviction_events']} eviction events, "
                     f"{fig['evicted_voxels']} voxels evicted")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", help="SensReader export folder; synthetic frames if omitted")
    ap.add_argument("--quick", action="store_true", help="20 timed frames, 1 repeat, RSS after 20 and 100")
    ap.add_argument("--timed-frames", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--voxel-size", type=float, default=0.02, help="metres")
    ap.add_argument("--max-voxels", type=int, default=200_000, help="bound for the RSS run")
    ap.add_argument("--max-depth", type=float, default=5.0, help="metres")
    ap.add_argument("--no-open3d", action="store_true")
    args = ap.parse_args(argv)
    # 500 shows whether RSS has levelled off once max_voxels binds, between the two requested readings.
    timed, repeats, checkpoints = args.timed_frames, args.repeats, (100, 500, 1000)
    if args.quick:
        timed, repeats, checkpoints = 20, 1, (20, 100)
    if args.frames:
        frames = load_frames(args.frames, limit=None)
        source = f"{len(frames)} frames from {args.frames}"
    else:
        frames = synthetic_frames(max(timed, 50))
        source = f"{len(frames)} synthetic frames"
    print(f"{source}; timing {min(timed, len(frames))} frames x {repeats} repeats, "
          f"loop for RSS after {', '.join(map(str, checkpoints))} frames")
    fig = fusion_figures(frames, args.voxel_size, timed, repeats, checkpoints, args.max_voxels, args.max_depth,
                         with_open3d=not args.no_open3d)
    for line in format_figures(fig):
        print(line)


if __name__ == "__main__":
    main()
