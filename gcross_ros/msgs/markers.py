"""The node's ``instances`` topic: one visualization_msgs/MarkerArray per segmentation, a translucent
box and a text label (class and object id) per object of the map, in the class colour.

Marker ids are the objects' ids (``gcross_core.mapping.instances``), so RViz updates a persisting
object's box in place; every array starts with a DELETEALL marker so objects that vanished disappear.
"""
from __future__ import annotations

import re
from typing import Dict, Sequence

import numpy as np
from visualization_msgs.msg import Marker, MarkerArray

from gcross_core.mapping.instances import MapObject
from gcross_ros.msgs.rclpy_msgs import make_header

BOX_NS = "boxes"
LABEL_NS = "labels"
BOX_ALPHA = 0.35  # see the points through the box
LABEL_HEIGHT_M = 0.12  # text height


def _marker(ns: str, object_id: int, kind: int, header, rgb, alpha: float) -> Marker:
    m = Marker(header=header, ns=ns, id=int(object_id), type=kind, action=Marker.ADD)
    m.pose.orientation.w = 1.0
    m.color.r, m.color.g, m.color.b = (float(c) / 255.0 for c in rgb)
    m.color.a = float(alpha)
    m.frame_locked = False
    return m


def object_markers(objects: Sequence[MapObject],
                   class_names: Sequence[str],
                   palette: np.ndarray,  # [K, 3] uint8 class colours
                   stamp_ns: int, frame_id: str) -> MarkerArray:
    """DELETEALL, then per object an axis-aligned CUBE and a TEXT_VIEW_FACING label above it."""
    header = make_header(stamp_ns, frame_id)
    out = [Marker(header=header, action=Marker.DELETEALL)]
    for obj in objects:
        rgb = palette[obj.class_index] if 0 <= obj.class_index < len(palette) else (200, 200, 200)
        name = class_names[obj.class_index] if 0 <= obj.class_index < len(class_names) else "object"
        lo, hi = np.asarray(obj.box_min, np.float64), np.asarray(obj.box_max, np.float64)
        centre, size = (lo + hi) / 2.0, np.maximum(hi - lo, 0.01)  # flat objects still show
        box = _marker(BOX_NS, obj.object_id, Marker.CUBE, header, rgb, BOX_ALPHA)
        box.pose.position.x, box.pose.position.y, box.pose.position.z = (float(v) for v in centre)
        box.scale.x, box.scale.y, box.scale.z = (float(v) for v in size)
        label = _marker(LABEL_NS, obj.object_id, Marker.TEXT_VIEW_FACING, header, rgb, 1.0)
        label.pose.position.x, label.pose.position.y = float(centre[0]), float(centre[1])
        label.pose.position.z = float(hi[2] + LABEL_HEIGHT_M)
        label.scale.z = LABEL_HEIGHT_M
        label.text = f"{name} #{obj.object_id} ({obj.score:.3f})"  # object_scores reads it back
        out += [box, label]
    return MarkerArray(markers=out)


_SCORE = re.compile(r"#(\d+) \(([0-9.]+)\)$")


def object_scores(msg: MarkerArray) -> Dict[int, float]:
    """object id -> score, read back from the labels of an ``instances`` array (what live evaluation ranks
    the objects of a published cloud by, as the node's tracker does)."""
    out = {}
    for m in msg.markers:
        found = _SCORE.search(m.text) if m.ns == LABEL_NS else None
        if found:
            out[int(found.group(1))] = float(found.group(2))
    return out
