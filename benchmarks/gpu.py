"""GPU figures (CUDA only): gsplat rendering, the SpUNet34C encoder, one pretraining step at the paper's
setting, Segmenter.predict and one segmentation of the node's pipeline. Prints figures; never asserts.
Without CUDA it prints one line saying so.

    python -m benchmarks.gpu                  # every case, median of 5 after a warm-up
    python -m benchmarks.gpu --quick          # what scripts/gpu_check.sh runs: every case, without the
                                              # sizes marked "full only", median of 3
    python -m benchmarks.gpu --only render,encoder --json figures.json

Cases (time: median of the repeats after a warm-up, with torch.cuda.synchronize; memory: peak allocated by
torch's CUDA allocator during the case, torch.cuda.max_memory_allocated):
- pretrain_step: one step (forward + backward + AdamW) at the paper's setting (benchmarks/pretrain_step.py
  "paper": 100k points, 5 views at 480x640, 128x128x32 head, tau 0.3) under the trainer's default bf16
  autocast, seconds per scene and peak memory next to the paper's 0.255 s/scene and 5.3 GB on one RTX 4090
  (Table 6). The teacher is EfficientNet-Lite0 with random weights (same cost as the real ones; RADIOv2.5,
  the paper's, is larger). Building the scene (a 400k-point procedural room) takes ~11 s of CPU.
- render: 50k and 500k Gaussians of benchmarks/render.py's room at 480x640, colour + depth + 16 feature
  channels, backend="gsplat", forward and forward+backward. For scale: gsplat's published profile renders
  a 32-channel feature map of ~112k Gaussians at 1080p at 157-168 FPS (forward).
- encoder: SpUNet34C (the paper's backbone) on 100k grid-sampled points, forward and forward+backward.
- segment: Segmenter.predict (SpUNet34C, 20 classes, random weights) at 100k points (and 280k: full only).
- node_chunk: one SegmentationPipeline.segment() with the node's default PipelineConfig (what its worker
  thread runs each segment_period_s) on a map fused from one default period of 640x480 frames at 10 Hz
  (benchmarks/fusion.py's synthetic room); every voxel is due, as at the node's first segmentation, so
  the pipeline's own default budget decides how much is segmented. Predict + fuse; each repeat fuses the
  map again on the CPU, so --quick times it once.

The figures go to --json after every case line, so a run that is cut off keeps what it measured. Exit
status 1 when a case raised (its error is a figure line; the other cases still run).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

CASES = ("pretrain_step", "render", "encoder", "segment", "node_chunk")  # the paper's comparison first
PAPER_STEP_S, PAPER_STEP_GB = 0.255, 5.3  # Table 6, one RTX 4090
# the CPU benchmark whose scene builder each case reuses
SCENE_BUILDERS = {"pretrain_step": "pretrain_step", "render": "render", "encoder": "encoder", "segment": "segment",
                  "node_chunk": "fusion"}
CAMERA_HZ = 10.0  # frame rate the node chunk's map is fused at (benchmarks/node.py's default --rate)


def _sibling(name: str):
    """A benchmark script next to this one, imported as a module (its scene builders are reused)."""
    return importlib.import_module(f"benchmarks.{name}")


def timed(fn, repeats: int):
    """(median seconds, peak MiB allocated) of ``fn`` after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20


def bench_render(repeats: int, quick: bool):
    from gcross_core.render import render
    from gcross_core.types import Gaussians

    scene = _sibling("render")
    width, height = 640, 480
    for n in (50_000, 500_000):
        gaussians, cameras = scene.make_scene(n, width, height, feature_dim=16)
        gaussians, cameras = gaussians.to("cuda"), cameras.to("cuda")
        fixed = Gaussians(**{k: v.float() if v.is_floating_point() else v for k, v in vars(gaussians).items()})

        def forward():
            with torch.no_grad():
                return render(fixed, cameras, width, height, backend="gsplat")

        def forward_backward():
            leaves = Gaussians(**{k: v.detach().clone().requires_grad_() if v.is_floating_point() else v
                                  for k, v in vars(fixed).items()})
            out = render(leaves, cameras, width, height, backend="gsplat")
            (out.color.sum() + out.depth.sum() + out.features.square().sum()).backward()

        for mode, fn in (("forward", forward), ("forward+backward", forward_backward)):
            s, mib = timed(fn, repeats)
            yield (f"{n // 1000}k Gaussians, {height}x{width}, 3+1+16 ch, {mode}",
                   f"{1e3 * s:.1f} ms ({1 / s:.0f} FPS), peak {mib:.0f} MiB")


def bench_encoder(repeats: int, quick: bool):
    from gcross_core.data.grid import collate_points
    from gcross_core.model.encoder import SpUNet, SpUNetConfig

    coord, feat, grid = _sibling("encoder").room_points(100_000, 0.02)
    points = collate_points([coord], [feat], [grid]).to("cuda")
    torch.manual_seed(0)
    model = SpUNet(SpUNetConfig()).cuda()

    def forward():
        model.eval()
        with torch.no_grad():
            model(points)

    def forward_backward():
        model.train()
        model.zero_grad(set_to_none=True)
        model(points).square().mean().backward()

    for mode, fn in (("forward", forward), ("forward+backward", forward_backward)):
        s, mib = timed(fn, repeats)
        yield f"SpUNet34C, 100k points, {mode}", f"{1e3 * s:.1f} ms, peak {mib:.0f} MiB"


def bench_pretrain_step(repeats: int, quick: bool):
    from gcross_core.pretraining.teachers.efficientnet import EfficientNetLite0
    from gcross_core.train.batch import move_to

    step_bench = _sibling("pretrain_step")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "efficientnet_lite0_random.pth"
        torch.save(EfficientNetLite0().state_dict(), weights)
        module, optimizer, batch, scenes, desc = step_bench.build_case("paper", Path(tmp), teacher_weights=weights)
    module.cuda()  # moves the parameters in place: the optimizer (no state before its first step) keeps them
    batch = move_to(batch, torch.device("cuda"))
    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def step():
        with torch.autocast("cuda", dtype=amp):
            loss = module(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    s, mib = timed(step, repeats)
    yield (f"paper step ({desc}), {str(amp).replace('torch.', '')} autocast",
           f"{s / scenes:.3f} s/scene, peak {mib / 1024:.2f} GB (paper, RTX 4090: {PAPER_STEP_S} s/scene, "
           f"{PAPER_STEP_GB} GB)")


def _random_segmenter():
    """Segmenter of SpUNet34C with 20 classes and random weights on CUDA (the cost does not depend on them)."""
    from gcross_core.data.classes import SCANNET20_CLASSES
    from gcross_core.model.encoder import SpUNetConfig
    from gcross_core.segmentation.model import build_segmenter_checkpoint
    from gcross_core.segmentation.segmenter import Segmenter

    with tempfile.TemporaryDirectory() as tmp:
        path = build_segmenter_checkpoint(Path(tmp) / "spunet34c.safetensors", SCANNET20_CLASSES, SpUNetConfig())
        return Segmenter.from_checkpoint(path, device="cuda")


def bench_segment(repeats: int, quick: bool):
    rooms = _sibling("segment")
    seg = _random_segmenter()
    for n in (100_000,) if quick else (100_000, 280_000):
        coord, color, normal = rooms.room_points(n)
        s, mib = timed(lambda: seg.predict(coord, color, normal), repeats)
        yield f"Segmenter.predict, SpUNet34C, {n // 1000}k points", f"{1e3 * s:.0f} ms, peak {mib:.0f} MiB"


def bench_node_chunk(repeats: int, quick: bool):
    import importlib.util

    if importlib.util.find_spec("numba") is None:  # the map's fusion kernels; llvmlite (57 MB) is not carried
        yield "node segmentation chunk", "not run: numba is not installed here (the map's fusion kernels need it)"
        return
    from gcross_core.mapping.pipeline import PipelineConfig, SegmentationPipeline

    config = PipelineConfig()
    num_frames = max(1, round(config.segment_period_s * CAMERA_HZ))
    frames = _sibling("fusion").synthetic_frames(num_frames)
    seg = _random_segmenter()

    def fused(frames_in):
        pipeline = SegmentationPipeline(seg, config)
        for i, frame in enumerate(frames_in):
            pipeline.process_frame(frame.color, frame.depth_m, frame.K, frame.cam_to_world, i / CAMERA_HZ)
        return pipeline

    fused(frames[:2]).segment()  # warm-up: CUDA context, spconv's kernels for this grid
    times, stats = [], None
    torch.cuda.reset_peak_memory_stats()
    for _ in range(1 if quick else repeats):
        pipeline = fused(frames)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        stats = pipeline.segment()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    mib = torch.cuda.max_memory_allocated() / 2**20
    s = statistics.median(times)
    yield (f"pipeline.segment(), default PipelineConfig, {stats.voxels} of {len(pipeline)} map voxels "
           f"({num_frames} frames at {1e2 * pipeline.voxel_size_m:.0f} cm), {len(times)} timed",
           f"{1e3 * s:.0f} ms ({stats.voxels / s / 1e3:.0f}k voxels/s), peak {mib:.0f} MiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="without the sizes marked 'full only', median of 3")
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 5, --quick 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and imports, run nothing")
    args = parser.parse_args(argv)
    only = [c for c in args.only.split(",") if c]
    unknown = sorted(set(only) - set(CASES))
    if unknown:
        parser.error(f"--only: unknown case(s) {unknown}; expected some of {CASES}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    figures = []
    if args.json:
        args.json.write_text("[]\n")
    if args.dry_run or not torch.cuda.is_available():
        why = "dry run" if args.dry_run else f"no CUDA device (torch {torch.__version__})"
        for case in only:  # each case reuses the scene builder of a CPU benchmark
            _sibling(SCENE_BUILDERS[case])
        print(f"benchmarks/gpu.py: skipped, {why}; cases {', '.join(only)} need a CUDA GPU")
        return 0
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"GPU benchmarks on {torch.cuda.get_device_name(0)}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), median of {repeats} after a warm-up{' (--quick)' if args.quick else ''}")
    print("| benchmark | case | figures |\n|---|---|---|", flush=True)
    errors = 0
    for case in only:
        try:
            for name, result in globals()[f"bench_{case}"](repeats, args.quick):
                figures.append({"benchmark": case, "case": name, "figures": result})
                print(f"| {case} | {name} | {result} |", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(figures, indent=1) + "\n")
        except Exception as err:  # noqa: BLE001 - one failing case must not hide the others' figures
            errors += 1
            figures.append({"benchmark": case, "case": "error", "figures": f"{type(err).__name__}: {err}"})
            print(f"| {case} | error | {type(err).__name__}: {err} |", flush=True)
            if args.json:
                args.json.write_text(json.dumps(figures, indent=1) + "\n")
        torch.cuda.empty_cache()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
