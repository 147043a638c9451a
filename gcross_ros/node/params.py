"""Parameters of the segmentation node, declared in one place.

``SegmentNodeParams`` mirrors the ROS parameters: the node's own fields, plus the frame assembly's
config (:class:`gcross_core.mapping.assembly.AssemblyConfig`) and the pipeline's
(:class:`gcross_core.mapping.pipeline.PipelineConfig`), whose fields are parameters of the same names in
one flat namespace (``voxel_size_m``, not ``pipeline.voxel_size_m``). Field names are parameter names,
defaults the parameter defaults and each field's ``description`` metadata the ParameterDescriptor text.
``declare_parameters(node)`` declares them all, ``SegmentNodeParams.from_node(node)`` reads them back
and ``validate()`` rejects unusable values with a message naming the parameter.

The parameters in ``RUNTIME_PARAMETERS`` can be set while the node runs (``ros2 param set``): the node
checks the new set of values with the same ``validate()`` as at start, refuses an invalid one with the
reason (the old value stays) and applies the rest at once. All others are read-only: they shape what
the node built at start (the map's voxel, the model, the subscriptions).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Tuple

from gcross_core.config import coerce, described
from gcross_core.errors import InputError
from gcross_core.mapping.assembly import AssemblyConfig
from gcross_core.mapping.pipeline import PipelineConfig

POSE_SOURCES = ("topic", "tf")
RENDER_BACKENDS = ("auto", "reference", "gsplat")
RENDER_SOURCES = ("voxels", "gaussians")
NESTED = ("assembly", "pipeline")
COLOR_TRANSPORTS = ("raw", "compressed")
DEPTH_TRANSPORTS = ("raw", "compressedDepth")
# Set while the node runs: periods, rendering, the depth range, what segmentation covers, warnings.
RUNTIME_PARAMETERS = frozenset({
    "segment_period_s", "segment_scope", "segment_max_voxels", "segment_context_m", "min_voxels_to_segment",
    "render_period_s", "publish_rendered", "render_width", "render_height", "render_backend",
    "max_render_gaussians", "render_source", "model_checkpoint", "render_up",
    "max_depth_m", "max_frame_rate_hz", "diagnostics_period_s", "lost_warn_ratio", "warn_throttle_s",
    "reset_map_on_time_jump", "save_map_path"})


@dataclass(frozen=True)
class SegmentNodeParams:
    checkpoint: str = described("", "Segmenter checkpoint (.safetensors) to load at start; empty: the bundled demo "
                                    "segmenter (12 classes, trained on synthetic rooms only: a smoke test, not a "
                                    "model for real scans).")
    device: str = described("cpu", "Torch device for segmentation and rendering: 'cpu', 'cuda' or 'cuda:N'.")
    color_transport: str = described("raw", "How colour arrives: 'raw' (sensor_msgs/Image rgb8 or bgr8 on "
                                            "color/image_raw) or 'compressed' (sensor_msgs/CompressedImage, JPEG or "
                                            "PNG, on color/image_raw/compressed, as image_transport publishes it).")
    depth_transport: str = described("raw", "How depth arrives: 'raw' (sensor_msgs/Image 16UC1 mm or 32FC1 m on "
                                            "depth/image_raw) or 'compressedDepth' (CompressedImage on "
                                            "depth/image_raw/compressedDepth: a 16-bit PNG of millimetres, or 32FC1 "
                                            "as quantised inverse depth, as compressed_depth_image_transport "
                                            "publishes it).")
    map_frame: str = described("map", "Frame of the fused map, of labelled_cloud and of the camera poses.")
    pose_source: str = described("topic", "Where camera poses come from: 'topic' (geometry_msgs/PoseStamped on 'pose', "
                                          "camera-to-map) or 'tf' (map_frame <- camera frame at the image stamp).")
    initial_map: str = described("", "A map folder written by the save_map service to start from (its voxel size must "
                                     "equal the node's and its classes the segmenter's; its objects keep their ids); "
                                     "empty: an empty map.")
    save_map_path: str = described("~/.ros/gcross_map", "Folder the save_map service writes the map to (replaced "
                                                        "atomically if it exists): map.ply, map.json and scene/.")
    reset_map_on_time_jump: bool = described(False, "When image stamps jump back (a bag played again), also clear the "
                                                    "map; the synchronizer, the waiting frames and the pose buffer "
                                                    "are always cleared.")
    render_period_s: float = described(2.0, "Pause between two renderings of the map at the latest camera pose (the "
                                            "CPU reference renderer needs about 1 s for 20k voxels at 320x240).")
    publish_rendered: bool = described(True, "Publish rendered/color, rendered/depth and rendered/semantic (and "
                                             "rendered/features with render_source gaussians).")
    render_width: int = described(320, "Width of the rendered images in pixels.")
    render_height: int = described(240, "Height of the rendered images in pixels.")
    render_backend: str = described("auto", "Renderer: 'auto' (gsplat on CUDA, else the PyTorch reference), "
                                            "'reference' or 'gsplat'.")
    max_render_gaussians: int = described(50_000, "At most this many Gaussians are rendered. render_source voxels: "
                                                  "beyond it the distant voxels in view are merged into coarser ones "
                                                  "(level of detail), so the whole view stays covered; gaussians: at "
                                                  "most this many cells of the model's grid are given to the model.")
    render_source: str = described("voxels", "What the rendered views show: 'voxels', one isotropic Gaussian per map "
                                             "voxel (a point splat, fast); 'gaussians', the feed-forward Gaussians of "
                                             "the GaussianCross model (model_checkpoint) for the visible map, which "
                                             "also publishes rendered/features.")
    model_checkpoint: str = described("", "render_source gaussians: GaussianCross pretraining checkpoint "
                                          "(.safetensors, kind 'pretrain'); empty: the bundled demo model (synthetic "
                                          "rooms only). The segmenter checkpoint stays separate.")
    render_up: str = described("cameras", "render_source gaussians: the map's up direction, which is turned to +z "
                                          "before the model sees it (it was trained on z-up scenes): 'cameras', a "
                                          "running estimate from the fused cameras (a hand-held or mounted camera's "
                                          "image down averages to gravity), or x,y,z in map_frame (0,0,1 for a z-up "
                                          "map frame).")
    diagnostics_period_s: float = described(1.0, "Period of the diagnostics message.")
    lost_warn_ratio: float = described(0.05, "Diagnostics turn WARN when more than this share of the color frames sent "
                                             "in a diagnostics period never reached the node (lost by the middleware "
                                             "or overwritten in the input queue).")
    warn_throttle_s: float = described(5.0, "Repeated warnings of one kind are logged at most once per this time.")
    segment_in_process: bool = described(True, "Run the segmenter in a child process of its own, so that its "
                                               "work never holds the core or the interpreter lock that fusion and "
                                               "the DDS callbacks need; false: on a thread of the node's process.")
    torch_threads: int = described(0, "Threads the segmenter uses (in its own process with segment_in_process); 0: "
                                      "all cores but one, which stays free for fusion and the DDS callbacks "
                                      "(torch's default of all cores oversubscribes the machine: on 2 cores "
                                      "segmentation took twice as long). Rendering in the node's process uses one "
                                      "thread when the segmenter has its own process.")
    fusion_queue_size: int = described(10, "Assembled frames waiting for the fusion thread, at least the deepest input "
                                          "queue (the camera callbacks only assemble, so the middleware's queues are "
                                          "always emptied); when fusion falls behind, the oldest waiting frame is "
                                          "dropped as fusion_backlog, so the map follows the camera and a stall never "
                                          "piles up work.")
    background_nice: int = described(10, "Niceness (0-19) added to the segmenter's process and the render thread: "
                                         "on a contended core the scheduler then runs fusion and the DDS "
                                         "callbacks first, so that no frame is lost while the model works; 0: "
                                         "the same priority as fusion.")
    # The frame assembly's and the pipeline's own configs: their fields are parameters of the same names
    # (one flat namespace; max_depth_m feeds both), described where they are defined.
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    @classmethod
    def _specs(cls) -> Dict[str, Tuple[Any, str]]:
        """parameter name -> (default, description): the node's own fields, then the assembly's and the
        pipeline's (a name both configs have is one parameter)."""
        specs: Dict[str, Tuple[Any, str]] = {}
        for owner in (cls, AssemblyConfig, PipelineConfig):
            for f in fields(owner):
                if f.name not in NESTED and f.name not in specs:
                    specs[f.name] = (f.default, f.metadata["description"])
        return specs

    @classmethod
    def parameter_names(cls) -> List[str]:
        return list(cls._specs())

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        return {name: default for name, (default, _) in cls._specs().items()}

    @classmethod
    def descriptions(cls) -> Dict[str, str]:
        return {name: text for name, (_, text) in cls._specs().items()}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "SegmentNodeParams":
        """Typed parameters from plain flat values, checked by :func:`gcross_core.config.coerce` as config
        files are (ints accepted for floats); unknown keys are an error."""
        specs = cls._specs()
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise InputError(f"unknown parameters {unknown}; known: {list(specs)}")
        typed = {name: coerce(values[name], type(specs[name][0]), name) for name in values}

        def pick(owner):
            return {f.name: typed[f.name] for f in fields(owner) if f.name in typed and f.name not in NESTED}

        return cls(**pick(cls), assembly=AssemblyConfig(**pick(AssemblyConfig)),
                   pipeline=PipelineConfig(**pick(PipelineConfig)))

    def flat(self) -> Dict[str, Any]:
        """Every parameter by name (what a parameter file or ``ros2 param dump`` lists)."""
        out = {f.name: getattr(self.assembly, f.name) for f in fields(AssemblyConfig)}
        out.update({f.name: getattr(self.pipeline, f.name) for f in fields(PipelineConfig)})
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in NESTED})
        return out

    @classmethod
    def from_node(cls, node) -> "SegmentNodeParams":
        """Read the declared parameters of an rclpy node (see :func:`declare_parameters`)."""
        return cls.from_dict({name: node.get_parameter(name).value for name in cls.parameter_names()})

    @property
    def checkpoint_path(self) -> str:
        """The checkpoint to load: ``checkpoint``, or the bundled demo segmenter when it is empty."""
        if self.checkpoint:
            return self.checkpoint
        from gcross_core.segmentation.segmenter import DEMO_CHECKPOINT  # the path only; gcross_core.segmentation.segmenter imports torch

        return str(DEMO_CHECKPOINT)

    @property
    def render_up_vector(self):
        """The given up vector (3 floats), or None: estimated from the cameras."""
        if self.render_up.strip().lower() == "cameras":
            return None
        from gcross_core.data.gravity import parse_up

        return parse_up(self.render_up)[1]

    @property
    def model_checkpoint_path(self) -> str:
        """The GaussianCross model rendered with render_source gaussians: ``model_checkpoint`` or the
        bundled demo model when it is empty."""
        if self.model_checkpoint:
            return self.model_checkpoint
        from gcross_core.model.api import DEMO_MODEL  # the path only

        return str(DEMO_MODEL)

    def validate(self) -> "SegmentNodeParams":
        """Raise InputError naming the unusable parameters; returns self for chaining."""
        errors = []
        if not os.path.isfile(self.checkpoint_path):
            errors.append(f"checkpoint {self.checkpoint_path!r} does not exist or is not a file")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            errors.append(f"device {self.device!r} is not 'cpu', 'cuda' or 'cuda:N'")
        if not self.map_frame:
            errors.append("map_frame is empty")
        if self.color_transport not in COLOR_TRANSPORTS:
            errors.append(f"color_transport {self.color_transport!r} is not one of {COLOR_TRANSPORTS}")
        if self.depth_transport not in DEPTH_TRANSPORTS:
            errors.append(f"depth_transport {self.depth_transport!r} is not one of {DEPTH_TRANSPORTS}")
        if self.pose_source not in POSE_SOURCES:
            errors.append(f"pose_source {self.pose_source!r} is not one of {POSE_SOURCES}")
        if self.render_source not in RENDER_SOURCES:
            errors.append(f"render_source {self.render_source!r} is not one of {RENDER_SOURCES}")
        elif self.render_source == "gaussians" and not os.path.isfile(self.model_checkpoint_path):
            errors.append(f"model_checkpoint {self.model_checkpoint_path!r} does not exist or is not a file")
        if self.render_up.strip().lower() != "cameras":
            from gcross_core.data.gravity import parse_up

            try:
                method, _ = parse_up(self.render_up)
                if method != "given":
                    raise InputError("'plane' is not available in the node")
            except InputError as e:
                errors.append(f"render_up {self.render_up!r}: {e}; expected 'cameras' or x,y,z")
        if self.render_backend not in RENDER_BACKENDS:
            errors.append(f"render_backend {self.render_backend!r} is not one of {RENDER_BACKENDS}")
        if not 0 <= self.lost_warn_ratio <= 1:
            errors.append(f"lost_warn_ratio must be in [0, 1], got {self.lost_warn_ratio}")
        if self.initial_map and not os.path.isdir(os.path.expanduser(self.initial_map)):
            errors.append(f"initial_map {self.initial_map!r} is not a folder (a map written by save_map)")
        if not self.save_map_path:
            errors.append("save_map_path is empty")
        if not self.pipeline.segment_period_s > 0:  # the node's worker would segment without a pause
            errors.append(f"segment_period_s must be > 0, got {self.pipeline.segment_period_s}")
        for name in ("render_period_s", "diagnostics_period_s", "warn_throttle_s"):
            if not getattr(self, name) > 0:
                errors.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("render_width", "render_height", "max_render_gaussians"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.torch_threads < 0:
            errors.append(f"torch_threads must be >= 0, got {self.torch_threads}")
        if self.fusion_queue_size < 1:
            errors.append(f"fusion_queue_size must be >= 1, got {self.fusion_queue_size}")
        if not 0 <= self.background_nice <= 19:
            errors.append(f"background_nice must be in 0..19, got {self.background_nice}")
        if errors:
            raise InputError("invalid parameters: " + "; ".join(errors))
        return self


def declare_parameters(node) -> None:
    """Declare every parameter of :class:`SegmentNodeParams` on ``node`` with its description.

    Float parameters accept integers too (``segment_period_s: 1`` in YAML), so they are declared with
    dynamic typing and checked by :meth:`SegmentNodeParams.from_node`. Those in ``RUNTIME_PARAMETERS``
    can be set at run time (the node checks them in its set-parameters callback); the others are
    read-only, and their descriptions say so.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    for name, (default, description) in SegmentNodeParams._specs().items():
        runtime = name in RUNTIME_PARAMETERS
        description += " (Can be set at run time.)" if runtime else " (Read-only: set at start.)"
        descriptor = ParameterDescriptor(description=description, read_only=not runtime,
                                         dynamic_typing=isinstance(default, float))
        node.declare_parameter(name, default, descriptor)
