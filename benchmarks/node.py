"""The segmentation node end to end: fusion, segmentation, latency and memory of the real node over DDS.

Figures printed:
  1. fusion ms/frame and the Open3D side-by-side ratio, and VoxelMap RSS after N frames (from
     benchmarks/fusion.py, same frames, same voxel size);
  2. Segmenter.predict + fuse_probabilities time for maps of 50k and 100k voxels (the default SpUNet,
     random weights: the time does not depend on their values), on spatially contiguous pieces of a
     map fused from the frames at 2 cm (so the encoder sees real surface density);
  3. the node as a subprocess with the default parameters (config/segment.yaml) and a full-size random
     checkpoint, fed 640x480 RGB-D frames + poses at --rate Hz by this process over DDS: end-to-end
     latency from publishing an image to receiving the labelled_cloud that contains it (the cloud's
     stamp is that of the newest fused frame), the node's own receipt-to-publish latency, its fusion
     time per frame (wall and CPU), frames sent/received/lost/fused/dropped (lost: frames that never
     reached the node's callback, from gaps in the stamps and the middleware's message-lost events),
     render coverage (the share of the pixels with a valid depth in the input frame that also have a
     depth in rendered/depth at the same camera pose: 1.0 when the render covers everything the camera
     saw; max_render_gaussians below the voxels in view exercises the level of detail) and the node
     process RSS after 100, 400 and 1000 frames of the same room (looped). This process and the node share the machine, and the
     DDS transport uses config/fastdds.xml unless --dds-profile says otherwise.

    python -m benchmarks.node --frames DIR    # a ScanNet SensReader export (color/, depth/, pose/, intrinsic/)
    python -m benchmarks.node                 # synthetic room frames (benchmarks/fusion.py)
    python -m benchmarks.node --quick         # small sizes, RSS after 20 and 100 frames
    python -m benchmarks.node --parts node --burst --rss-at 100 [--reliable-inputs --input-depth 100]
                                              # a burst as from a bag played as fast as possible

The latency of a labelled cloud is the wait for the next segmentation (up to segment_period_s after
the previous one ended) plus one segmentation, which with segment_scope priority (the default) covers at
most segment_max_voxels voxels, new voxels in view first (--param segment_scope=recent: everything observed
since the previous segmentation; map: the whole map). The latency is measured for the newest frame in
each cloud: the voxels in the current view.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import yaml

from benchmarks import fusion as FB
from gcross_core.image import depth_m_to_mm
from gcross_core.mapping.fusion import VoxelMap
from gcross_core.segmentation.model import build_segmenter_checkpoint
from gcross_core.segmentation.segmenter import Segmenter

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 20  # ScanNet-20 sized head
BENCH_GRID_M = 0.02  # grid of the random benchmark checkpoint (the node maps at it: voxel_size_m 0)


# ---------------------------------------------------------------- segmentation

def segmentation_figures(frames, sizes: Sequence[int], checkpoint: Path, repeats: int,
                         voxel_size_m: float = 0.02) -> Dict[str, float]:
    """Median seconds of predict + fuse_probabilities on the ``n`` voxels nearest the map centroid."""
    logging.getLogger("gcross_core.mapping.fusion").setLevel(logging.ERROR)
    vmap = VoxelMap(voxel_size_m, 2_000_000, NUM_CLASSES)
    for fr in frames:
        vmap.integrate(fr.color, fr.depth_m, fr.K, fr.cam_to_world)
    snap = vmap.snapshot()
    centre = np.median(snap.coords, axis=0)
    order = np.argsort(np.linalg.norm(snap.coords - centre, axis=1))
    seg = Segmenter.from_checkpoint(checkpoint, "cpu")
    out: Dict[str, float] = {"map_voxels_2cm": len(snap)}
    seg.predict(snap.coords[order[:2000]], snap.colors[order[:2000]], snap.normals[order[:2000]])  # warm-up
    for n in sizes:
        idx = np.sort(order[: min(n, len(order))])
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _, _, probs = seg.predict(snap.coords[idx], snap.colors[idx], snap.normals[idx], return_probs=True)
            vmap.fuse_probabilities(idx, probs)
            times.append(time.perf_counter() - t0)
        out[f"segment_s_{n}"] = float(np.median(times))
        out[f"segment_n_{n}"] = len(idx)
    return out


# ---------------------------------------------------------------- the node over DDS

def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process now (VmRSS) or its peak so far (VmHWM), MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int) -> List[int]:
    """Child processes of ``pid`` (the node's segmenter process with segment_in_process)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _coverage(valid: np.ndarray,  # [H, W] bool, input resolution
              rendered: np.ndarray,  # [h, w] bool, render resolution
              ) -> float:
    """Share of the valid input pixels whose (nearest) rendered pixel has a depth."""
    (H, W), (h, w) = valid.shape, rendered.shape
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(int), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(int), W - 1)
    want = valid[np.ix_(rows, cols)]
    return float(rendered[want].mean()) if want.any() else float("nan")


def node_figures(frames, checkpoint: Path, rss_at: Sequence[int], rate_hz: float, tmp: Path,
                 overrides: Optional[dict] = None, burst: bool = False) -> Dict[str, float]:
    """The node over DDS; frames are stamped at ``rate_hz`` and sent at that pace, or back to back (``burst``)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from gcross_ros.msgs import rclpy_msgs as cv
    from gcross_ros.msgs.codec import stamp_to_ns
    from gcross_ros.node.process import start_node_process, stop_node_process

    # Sent as 16UC1, as a camera driver publishes depth; converted here, before the node runs.
    depth_mm = [depth_m_to_mm(fr.depth_m) for fr in frames]
    params = yaml.safe_load((REPO / "config" / "segment.yaml").read_text())["/**"]["ros__parameters"]
    params.update(checkpoint=str(checkpoint), **(overrides or {}))
    params_file = tmp / "node_params.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    log_path = tmp / "node.log"
    proc, log = start_node_process(params_file, log_path, env=env, cwd=REPO)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("gcross_node_benchmark", context=context)
    lock = threading.Lock()
    clouds: List[tuple] = []  # (receive monotonic, stamp ns, points)
    diags: List[dict] = []
    renders: List[tuple] = []  # (stamp ns, [h, w] bool: pixels with a rendered depth)
    valid: Dict[int, np.ndarray] = {}  # stamp ns -> [H, W] bool: valid pixels of the depth image sent

    def on_cloud(msg):
        with lock:
            clouds.append((time.monotonic(), stamp_to_ns(msg.header.stamp), msg.width))

    def on_render(msg):
        from gcross_ros.msgs.codec import decode_image

        with lock:
            renders.append((stamp_to_ns(msg.header.stamp), np.isfinite(decode_image(msg))))

    def on_diag(msg):
        with lock:
            diags.append({kv.key: float(kv.value) for kv in msg.status[0].values})

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(PointCloud2, "labelled_cloud", on_cloud, reliable)
    node.create_subscription(DiagnosticArray, "diagnostics", on_diag, 10)
    node.create_subscription(Image, "rendered/depth", on_render, reliable)
    pubs = {name: node.create_publisher(t, topic, reliable) for name, t, topic in (
        ("color", Image, "color/image_raw"), ("depth", Image, "depth/image_raw"),
        ("info", CameraInfo, "color/camera_info"), ("pose", PoseStamped, "pose"))}
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    out: Dict[str, float] = {"rate_hz": rate_hz}
    try:
        deadline = time.monotonic() + 180
        while not (diags and all(p.get_subscription_count() for p in pubs.values())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the node did not come up:\n" + log_path.read_text()[-2000:])
            time.sleep(0.1)
        sent: Dict[int, float] = {}
        stamp0 = 10**12
        period = 1.0 / rate_hz
        t_next = time.monotonic()
        for k in range(1, max(rss_at) + 1):
            fr = frames[(k - 1) % len(frames)]
            stamp = stamp0 + k * int(period * 1e9)
            pose = cv.pose_stamped(fr.cam_to_world, stamp, params["map_frame"])
            h, w = fr.depth_m.shape
            color = cv.numpy_to_image(fr.color, "rgb8", stamp, "camera_optical")
            depth = cv.numpy_to_image(depth_mm[(k - 1) % len(frames)], "16UC1", stamp, "camera_optical")
            pubs["pose"].publish(pose)
            pubs["info"].publish(cv.make_camera_info(fr.K, w, h, stamp, "camera_optical"))
            pubs["depth"].publish(depth)
            sent[stamp] = time.monotonic()
            valid[stamp] = (fr.depth_m > 0) & (fr.depth_m < params["max_depth_m"])
            pubs["color"].publish(color)
            if k in rss_at:
                out[f"node_rss_after_{k}_mb"] = _rss_mb(proc.pid)
                out[f"node_peak_after_{k}_mb"] = _rss_mb(proc.pid, "VmHWM")
                out[f"segmenter_rss_after_{k}_mb"] = sum(_rss_mb(c) for c in _children(proc.pid))
                with lock:
                    out[f"node_voxels_after_{k}"] = diags[-1].get("map_voxels", 0)
            t_next += period
            if not burst:
                time.sleep(max(0.0, t_next - time.monotonic()))
        # The last frames still need a segmentation: the second cloud that arrives after the last frame
        # was sent started after it (clouds come one segmentation at a time).
        sent_all = time.monotonic()
        while True:
            with lock:
                if sum(recv > sent_all for recv, _, _ in clouds) >= 2:
                    break
                seg_s = diags[-1].get("segmentation_ms", 0.0) / 1e3
            if time.monotonic() > sent_all + min(2 * (params["segment_period_s"] + seg_s) + 30, 600):
                break
            time.sleep(0.2)
        with lock:
            got, diag = list(clouds), dict(diags[-1])
            fusion_means = [d["fusion_ms_mean"] for d in diags if "fusion_ms_mean" in d]
            fusion_cpu = [d["fusion_cpu_ms_mean"] for d in diags if "fusion_cpu_ms_mean" in d]
            node_latency = sorted({d["latency_ms"] for d in diags if "latency_ms" in d})
        lat = [recv - sent[stamp] for recv, stamp, _ in got if stamp in sent]
        with lock:
            coverage = [_coverage(valid[stamp], seen) for stamp, seen in renders if stamp in valid]
        if coverage:
            out.update(render_coverage_median=float(np.median(coverage)), render_coverage_min=float(np.min(coverage)),
                       render_coverage_last=coverage[-1], renders=len(coverage))
        out.update(frames_sent=max(rss_at), frames_in=diag.get("frames_in", 0),
                   frames_lost=diag.get("frames_lost", 0), lost_stamp_gaps=diag.get("arrivals.lost_by_stamps", 0),
                   lost_exact=bool(diag.get("arrivals.exact", 0)),
                   lost_middleware={k[len("lost.middleware."):]: v for k, v in diag.items()
                                    if k.startswith("lost.middleware.")},
                   frames_fused=diag.get("frames_fused", 0),
                   frames_dropped=diag.get("frames_dropped", 0), clouds=len(got),
                   cloud_points_last=got[-1][2] if got else 0, map_voxels=diag.get("map_voxels", 0),
                   node_fusion_ms=float(np.mean(fusion_means)) if fusion_means else float("nan"),
                   node_fusion_cpu_ms=float(np.mean(fusion_cpu)) if fusion_cpu else float("nan"),
                   node_segmentation_ms_last=diag.get("segmentation_ms", float("nan")),
                   node_render_ms_last=diag.get("render_ms", float("nan")),
                   render_voxels_in_view=diag.get("render_voxels_in_view", float("nan")),
                   render_gaussians=diag.get("render_gaussians", float("nan")))
        # each segmentation / render is reported once per diagnostics period until the next: distinct values
        for key in ("segmentation_ms", "render_ms", "segmented_voxels"):
            runs = sorted({d[key] for d in diags if key in d})
            out[f"node_{key}_median"] = float(np.median(runs)) if runs else float("nan")
        if lat:
            out.update(e2e_latency_s_median=float(np.median(lat)), e2e_latency_s_max=float(np.max(lat)))
        if node_latency:
            out.update(node_latency_s_median=float(np.median(node_latency)) / 1e3)
        out["dropped"] = {k[len("dropped."):]: v for k, v in diag.items() if k.startswith("dropped.")}
        out["segment_due"] = {k[len("segment_due."):]: v for k, v in diag.items() if k.startswith("segment_due.")}
        if lat:
            out.update(e2e_latency_s_p95=float(np.percentile(lat, 95)))
    finally:
        stop_node_process(proc, log, timeout_s=20)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", help="SensReader export folder; synthetic frames if omitted")
    ap.add_argument("--quick", action="store_true", help="small sizes: 20 timed frames, RSS after 20/100")
    ap.add_argument("--rate", type=float, default=10.0, help="frames per second sent to the node")
    ap.add_argument("--voxel-size", type=float, default=None,
                    help="fusion benchmark voxel size in metres (default: the benchmark checkpoint's grid, 2 cm; "
                         "the node itself maps at half the grid, voxel_size_m: 0)")
    ap.add_argument("--no-open3d", action="store_true")
    ap.add_argument("--parts", default="fusion,segmentation,node",
                    help="comma-separated subset of fusion, segmentation, node")
    ap.add_argument("--burst", action="store_true",
                    help="send the frames back to back (still stamped at --rate): a bag played as fast as possible")
    ap.add_argument("--input-depth", type=int, default=None,
                    help="history depth of the node's camera subscriptions (qos_overrides; default: sensor-data's 5)")
    ap.add_argument("--reliable-inputs", action="store_true",
                    help="switch the node's camera subscriptions to reliable (qos_overrides parameters): "
                         "measures the node rather than large best-effort samples lost by the transport")
    ap.add_argument("--dds-profile", default=str(REPO / "config" / "fastdds.xml"),
                    help="Fast DDS XML profile for this process and the node (default: config/fastdds.xml, "
                         "what the launch file gives the node); '' for Fast DDS's defaults")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="override a node parameter of config/segment.yaml (YAML value), e.g. torch_threads=1")
    ap.add_argument("--rss-at", default=None,
                    help="frame counts at which the node's RSS is read (default 100,400,1000: the 7-Scenes "
                         "sample room is covered after ~330 frames; quick 20,100)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.dds_profile:  # read when this process and the node create their DDS participants
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(Path(args.dds_profile).resolve())
    from gcross_ros.node.params import SegmentNodeParams

    voxel = args.voxel_size or BENCH_GRID_M
    timed, repeats, rss_at, sizes = 100, 3, (100, 400, 1000), (50_000, 100_000)
    if args.quick:
        timed, repeats, rss_at, sizes = 20, 1, (20, 100), (5_000, 10_000)
    if args.rss_at:
        rss_at = tuple(int(k) for k in args.rss_at.split(","))
    frames = FB.load_frames(args.frames) if args.frames else FB.synthetic_frames(max(timed, 50))
    h, w = frames[0].depth_m.shape
    print(f"{len(frames)} {'frames from ' + args.frames if args.frames else 'synthetic frames'} ({w}x{h}); "
          f"CPU, {os.cpu_count()} cores (shared machine: figures vary with its load)")

    if "fusion" in parts:
        for line in FB.format_figures(FB.fusion_figures(frames, voxel, timed, repeats, rss_at, 200_000, 5.0,
                                                        with_open3d=not args.no_open3d)):
            print(line)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = build_segmenter_checkpoint(tmp / "random.safetensors", [f"class{i}" for i in range(NUM_CLASSES)],
                                          grid_size_m=BENCH_GRID_M)
        if "segmentation" in parts:
            seg = segmentation_figures(frames, sizes, ckpt, repeats)
            for n in sizes:
                print(f"segmentation (default SpUNet, {NUM_CLASSES} classes, predict + fuse): "
                      f"{seg[f'segment_n_{n}']} voxels {seg[f'segment_s_{n}']:.2f} s")
        if "node" not in parts:
            return
        overrides = {}
        for item in args.param:
            name, sep, value = item.partition("=")
            if not sep or name not in SegmentNodeParams.parameter_names():
                raise SystemExit(f"--param {item!r}: expected NAME=VALUE with NAME one of "
                                 f"{sorted(SegmentNodeParams.parameter_names())}")
            overrides[name] = yaml.safe_load(value)
        sub_qos = {}
        if args.reliable_inputs:
            sub_qos["reliability"] = "reliable"
        if args.input_depth:
            sub_qos["depth"] = args.input_depth
        if sub_qos:
            overrides["qos_overrides"] = {f"/{topic}": {"subscription": dict(sub_qos)}
                                          for topic in ("color/image_raw", "depth/image_raw", "color/camera_info")}
        fig = node_figures(frames, ckpt, rss_at, args.rate, tmp, overrides, burst=args.burst)
        qos = "reliable" if args.reliable_inputs else "sensor-data (best effort)"
        qos += f", depth {args.input_depth}" if args.input_depth else ""
        dds = f"DDS profile {Path(args.dds_profile).name}" if args.dds_profile else "Fast DDS default transports"
        changed = "".join(f", {k}={v}" for k, v in overrides.items() if k != "qos_overrides")
        pace = "as one burst" if args.burst else f"at {fig['rate_hz']:g} Hz"
        print(f"node (config/segment.yaml{changed}, {qos} inputs, {dds}, {w}x{h} {pace}): "
              f"{fig['frames_sent']} frames sent, "
              f"{fig['frames_in']:.0f} received, {fig['frames_lost']:.0f} lost before the node's callback "
              f"({'exact, from sequence numbers' if fig['lost_exact'] else 'estimated'}; stamp-gap estimate {fig['lost_stamp_gaps']:.0f}, middleware-reported "
              f"{fig['lost_middleware'] or 'none'}), "
              f"{fig['frames_fused']:.0f} fused, {fig['frames_dropped']:.0f} "
              f"dropped {fig['dropped']}; fusion in the node {fig['node_fusion_ms']:.1f} ms/frame wall, "
              f"{fig['node_fusion_cpu_ms']:.1f} ms CPU (wall > CPU: the thread waited for a core or the GIL)")
        print(f"node map {fig['map_voxels']:.0f} voxels; segmentation {fig['node_segmentation_ms_last'] / 1e3:.2f} s "
              f"last, {fig['node_segmentation_ms_median'] / 1e3:.2f} s median (median "
              f"{fig['node_segmented_voxels_median']:.0f} voxels segmented at a time); render "
              f"{fig['node_render_ms_last'] / 1e3:.2f} s last, {fig['node_render_ms_median'] / 1e3:.2f} s median; "
              f"{fig['clouds']} clouds")
        if "render_coverage_median" in fig:
            budget = overrides.get("max_render_gaussians", SegmentNodeParams().max_render_gaussians)
            print(f"render coverage (valid input depth pixels that rendered/depth covers at the same pose; "
                  f"max_render_gaussians={budget}, map {fig['map_voxels']:.0f} voxels, last render "
                  f"{fig['render_voxels_in_view']:.0f} voxels in view as {fig['render_gaussians']:.0f} Gaussians): median "
                  f"{fig['render_coverage_median']:.3f}, min {fig['render_coverage_min']:.3f}, last "
                  f"{fig['render_coverage_last']:.3f} over {fig['renders']} renders")
        if "e2e_latency_s_median" in fig:
            print(f"latency image publish -> labelled_cloud received: median {fig['e2e_latency_s_median']:.2f} s, "
                  f"p95 {fig['e2e_latency_s_p95']:.2f} s, max {fig['e2e_latency_s_max']:.2f} s; left to segment at "
                  f"the end, per tier: {fig['segment_due'] or 'n/a'}; node receipt -> publish median "
                  f"{fig.get('node_latency_s_median', float('nan')):.2f} s")
        rss = []
        for key in (k for k in fig if k.startswith("node_rss_after_")):
            n = key[len("node_rss_after_"):-3]
            rss.append(f"{n} frames {fig[key]:.0f} MB now / {fig[f'node_peak_after_{n}_mb']:.0f} MB peak "
                       f"+ segmenter process {fig[f'segmenter_rss_after_{n}_mb']:.0f} MB "
                       f"({fig[f'node_voxels_after_{n}']:.0f} voxels)")
        print("node process RSS (a segmentation in flight holds the encoder's activations): " + ", ".join(rss))


if __name__ == "__main__":
    main()
