"""Bag messages -> assembled RGB-D frames, through the node's own frame assembly.

Every bag tool (``gcross-bag eval``, ``export``, the render panel, ``read_bag``) reads frames here: the
bag's colour, depth, camera_info and pose messages go, in the order they were recorded, through
:class:`gcross_core.mapping.assembly.FrameAssembler` with the bag's log time as the clock, exactly as the
live node would have received them. Poses come from a ``geometry_msgs/PoseStamped`` topic (camera-to-map,
fed to the assembler's pose buffer as they were recorded) or from ``/tf`` + ``/tf_static`` (read first,
composed from ``map_frame`` down to the images' frame and interpolated at each stamp).

A message whose payload cannot be decoded (garbled CDR) is skipped and listed with its topic and log
time, as the node drops a bad frame and goes on; damage to the bag as a whole (truncated, unreadable
storage) still stops with a :class:`~gcross_core.errors.BagError`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from gcross_core.errors import BagError, InputError
from gcross_core.mapping.assembly import EXPECTED_DROPS, AssembledFrame, AssemblyConfig, FrameAssembler
from gcross_core.mapping.sync import POSE_MISSING, POSE_OK, PoseBuffer, PoseLookup
from gcross_ros.bag.format import COMPRESSED_SUFFIXES, SCENE_NAME_KEY, BagContents, BagFrame, BagTopics
from gcross_ros.bag.reader import BagReader, read_ground_truth
from gcross_ros.msgs import codec
from gcross_ros.msgs.camera import CameraDecoder, add_pose_message

log = logging.getLogger(__name__)

TF = "/tf"
TF_STATIC = "/tf_static"


@dataclass(frozen=True)
class SkippedMessage:
    topic: str
    log_time_ns: int
    error: str


class TfTree:
    """Transforms of /tf (interpolated in time) and /tf_static; answers parent <- child at a stamp."""

    def __init__(self, tolerance_ns: int):
        self.tolerance_ns = int(tolerance_ns)
        self._static: Dict[str, Tuple[str, np.ndarray]] = {}  # child -> (parent, parent_from_child)
        self._dynamic: Dict[str, Tuple[str, List[Tuple[int, np.ndarray]]]] = {}

    def add(self, msg, static: bool) -> None:
        for tr in msg.transforms:
            parent, child = tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/")
            T = codec.pose_to_matrix(tr.transform.translation, tr.transform.rotation)
            if static:
                self._static[child] = (parent, T)
            else:
                self._dynamic.setdefault(child, (parent, []))[1].append((codec.stamp_to_ns(tr.header.stamp), T))

    @property
    def frames(self) -> List[str]:
        names = set(self._static) | set(self._dynamic)
        names |= {p for p, _ in self._static.values()} | {p for p, _ in self._dynamic.values()}
        return sorted(names)

    def chain(self, target: str, source: str) -> List[str]:
        """Frames from ``source`` up to ``target``; BagError when TF does not connect them."""
        path, frame = [source], source
        while frame != target:
            edge = self._static.get(frame) or self._dynamic.get(frame)
            if edge is None or len(path) > 64:
                raise BagError(f"TF has no path from {source} up to {target} (stuck at {frame}); frames in "
                               f"/tf and /tf_static: {self.frames}")
            frame = edge[0]
            path.append(frame)
        return path

    def buffers(self) -> Dict[str, PoseBuffer]:
        out = {}
        for child, (_, samples) in self._dynamic.items():
            buf = PoseBuffer(self.tolerance_ns, capacity=max(len(samples), 2))
            for stamp, T in samples:
                buf.add(stamp, T)
            out[child] = buf
        return out

    def lookup(self, chain: List[str], buffers: Dict[str, PoseBuffer], stamp_ns: int) -> Optional[np.ndarray]:
        """target <- source at ``stamp_ns`` along ``chain`` (from :meth:`chain`); None if a link has no pose."""
        T = np.eye(4)
        for child in chain[:-1]:
            if child in self._static:
                link = self._static[child][1]
            else:
                found = buffers[child].lookup(stamp_ns)
                if found.status != POSE_OK:
                    return None
                link = found.cam_to_map
            T = link @ T
        return T


class BagFrames:
    """Iterate the assembled frames of a bag; the caller reports each one as used (:meth:`used`) or dropped
    (``self.assembler.drop(frame, reason)``), so that ``account()`` adds up as the node's does.

    ``topics``: role -> topic for ``color``, ``depth``, ``camera_info`` and ``pose`` (a PoseStamped topic,
    or ``/tf``).
    """

    def __init__(self, bag: BagReader, topics: Dict[str, str], config: AssemblyConfig = AssemblyConfig(),
                 map_frame: str = "map"):
        self.bag, self.topics, self.map_frame = bag, dict(topics), map_frame
        self.skipped: List[SkippedMessage] = []
        pose_source = self._tf_source(config) if self.topics["pose"] == TF else None
        self.assembler = FrameAssembler(CameraDecoder(), config, pose_source=pose_source)

    def used(self, frame: AssembledFrame) -> None:
        self.assembler.fused(frame)

    def _skip(self, topic: str, t_ns: int, e: Exception) -> None:
        self.skipped.append(SkippedMessage(topic, int(t_ns), str(e)))
        log.warning("bag %s: %s message at log time %.3f s skipped: %s", self.bag.path, topic, t_ns * 1e-9, e)

    def _tf_source(self, config: AssemblyConfig):
        tree = TfTree(int(config.pose_tolerance_s * 1e9))
        tf_topics = [t for t in (TF, TF_STATIC) if t in self.bag.topics]
        for topic, msgtype, t_ns, raw in self.bag.messages(tf_topics):
            try:
                tree.add(self.bag.deserialize(raw, msgtype, topic), static=topic == TF_STATIC)
            except (BagError, ValueError) as e:
                self._skip(topic, t_ns, e)
        buffers = tree.buffers()
        chains: Dict[str, List[str]] = {}

        def lookup(stamp_ns: int, frame_id: str) -> PoseLookup:
            frame_id = frame_id.lstrip("/")
            if not frame_id:
                raise BagError(f"bag {self.bag.path}: colour images carry no header.frame_id, so TF cannot place "
                               "them; pass --pose-topic")
            if frame_id not in chains:
                chains[frame_id] = tree.chain(self.map_frame, frame_id)
            T = tree.lookup(chains[frame_id], buffers, stamp_ns)
            return PoseLookup(POSE_OK, T) if T is not None else PoseLookup(POSE_MISSING)
        return lookup

    def __iter__(self) -> Iterator[AssembledFrame]:
        t = self.topics
        asm = self.assembler
        add = {t["color"]: None, t["depth"]: asm.add_depth, t["camera_info"]: asm.add_camera_info}
        wanted = list(add) + ([t["pose"]] if t["pose"] != TF else [])
        for topic, msgtype, t_ns, raw in self.bag.messages(wanted):
            try:
                msg = self.bag.deserialize(raw, msgtype, topic)
                stamp = codec.stamp_to_ns(msg.header.stamp)
            except (BagError, AttributeError) as e:
                self._skip(topic, t_ns, e)
                continue
            if topic == t["pose"]:
                try:
                    add_pose_message(asm, msg)
                except InputError as e:
                    log.warning("bag %s: %s", self.bag.path, e)
                out = asm.poll(t_ns * 1e-9)
            elif topic == t["color"]:
                out = asm.add_color(msg, stamp, t_ns * 1e-9, sent_ns=t_ns)
            else:
                out = add[topic](msg, stamp, t_ns * 1e-9)
            self._log_drops(out)
            yield from out.frames
        out = asm.flush()
        self._log_drops(out)
        yield from out.frames

    def _log_drops(self, out) -> None:
        if out.time_jump is not None:
            log.warning("bag %s: stamps jumped back by %.1f s on %s: the assembly started over", self.bag.path,
                        out.time_jump.jump_ns * 1e-9, out.time_jump.stream)
        for d in out.drops:
            if d.message:
                log.debug("bag %s: %s", self.bag.path, d.message)

    def describe(self) -> str:
        """One line for logs and errors: colour images in, frames dropped by reason (those asked for, like
        frames a tool leaves out, not named), and messages that could not be decoded."""
        acc = self.assembler.account()
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(acc.dropped.items()) if k not in EXPECTED_DROPS)
        return (f"{acc.frames_in} colour images, frames dropped: {reasons or 'none'}; {len(self.skipped)} messages "
                "could not be decoded")

    def summary(self) -> dict:
        """The assembler's account plus the skipped messages (for reports)."""
        out = self.assembler.account().as_dict()
        out["messages_skipped"] = len(self.skipped)
        out["skipped"] = [{"topic": s.topic, "log_time_ns": s.log_time_ns, "error": s.error}
                          for s in self.skipped]
        return out


def gcross_topic_roles(bag: BagReader, topics: BagTopics = BagTopics()) -> Dict[str, str]:
    """role -> topic of a gcross bag: the pose topic, or /tf (map -> camera frame) when it has none; colour
    and depth as raw images, or, where the bag has no raw topic of that name, as image_transport's
    compressed ones (``<topic>/compressed``, ``<topic>/compressedDepth``), which the decoder tells apart by
    their message."""
    avail = bag.topics
    roles = {"color": topics.color, "depth": topics.depth, "camera_info": topics.camera_info,
             "pose": topics.pose if topics.pose in avail else topics.tf}
    for role in ("color", "depth"):
        compressed = roles[role] + COMPRESSED_SUFFIXES[role]
        if roles[role] not in avail and compressed in avail:
            roles[role] = compressed
    missing = [t for t in roles.values() if t not in avail]
    if missing:
        raise BagError(f"bag {bag.path} lacks topics {missing} (has {sorted(avail)})")
    return roles


def iter_frames(path, topics: BagTopics = BagTopics(), config=None) -> Iterator[BagFrame]:
    """RGB-D frames of a bag in stamp order, assembled as the node assembles them
    (:class:`gcross_ros.bag.frames.BagFrames`; ``config``: an AssemblyConfig, default the node's defaults).
    Frames the assembly drops are counted and logged, never guessed."""
    with BagReader(path) as bag:
        frames = BagFrames(bag, gcross_topic_roles(bag, topics), config or AssemblyConfig())
        for f in frames:
            frames.used(f)
            yield BagFrame(f.stamp_ns, f.color_rgb, f.depth_m, f.K, f.cam_to_map, f.frame_id)
        if frames.assembler.account().frames_dropped or frames.skipped:
            log.warning("bag %s: %s", bag.path, frames.describe())


def read_bag(path, topics: BagTopics = BagTopics()) -> BagContents:
    """Everything in a gcross bag as stacked arrays (for tests and small bags; use iter_frames otherwise)."""
    frames = list(iter_frames(path, topics))
    gt = read_ground_truth(path, topics)
    with BagReader(path) as bag:
        class_names = bag.class_names
        scene_name = bag.custom_data.get(SCENE_NAME_KEY)
    if frames:
        shapes = {f.depth_m.shape for f in frames}
        if len(shapes) > 1:
            raise BagError(f"bag {path}: frames have different sizes {sorted(shapes)}; use iter_frames")
        stack = dict(stamps_ns=np.array([f.stamp_ns for f in frames], np.int64),
                     color=np.stack([f.color for f in frames]), depth_m=np.stack([f.depth_m for f in frames]),
                     K=np.stack([f.K for f in frames]), cam_to_map=np.stack([f.cam_to_map for f in frames]))
    else:
        stack = dict(stamps_ns=np.zeros(0, np.int64), color=np.zeros((0, 0, 0, 3), np.uint8),
                     depth_m=np.zeros((0, 0, 0), np.float32), K=np.zeros((0, 3, 3)), cam_to_map=np.zeros((0, 4, 4)))
    return BagContents(**stack, gt=gt, class_names=class_names, scene_name=scene_name)
