"""The instances MarkerArray: DELETEALL first, then a box and a label per object, ids = object ids."""
import numpy as np
import pytest

pytest.importorskip("visualization_msgs")
from visualization_msgs.msg import Marker  # noqa: E402

from gcross_core.mapping.instances import MapObject  # noqa: E402
from gcross_ros.msgs.markers import BOX_NS, LABEL_NS, object_markers, object_scores  # noqa: E402

NAMES = ["wall", "chair", "table"]
PALETTE = np.array([[10, 20, 30], [255, 0, 0], [0, 255, 0]], np.uint8)


def test_boxes_and_labels_per_object():
    objs = [MapObject(4, 1, 0.8, np.array([0.0, 0.0, 0.0]), np.array([0.5, 1.0, 1.0]), 120),
            MapObject(9, 2, 0.6, np.array([2.0, 2.0, 0.7]), np.array([3.0, 2.0, 0.7]), 40)]  # a flat top
    msg = object_markers(objs, NAMES, PALETTE, stamp_ns=5 * 10**9 + 7, frame_id="map")
    assert msg.markers[0].action == Marker.DELETEALL
    boxes = {m.id: m for m in msg.markers if m.ns == BOX_NS}
    labels = {m.id: m for m in msg.markers if m.ns == LABEL_NS}
    assert set(boxes) == set(labels) == {4, 9}
    b = boxes[4]
    assert b.type == Marker.CUBE and b.header.frame_id == "map" and b.header.stamp.sec == 5
    assert (b.pose.position.x, b.pose.position.y, b.pose.position.z) == (0.25, 0.5, 0.5)
    assert (b.scale.x, b.scale.y, b.scale.z) == (0.5, 1.0, 1.0) and b.pose.orientation.w == 1.0
    assert (b.color.r, b.color.g, b.color.b) == (1.0, 0.0, 0.0) and 0 < b.color.a < 1
    assert boxes[9].scale.y > 0 and boxes[9].scale.z > 0  # flat or thin objects still have a visible box
    assert labels[9].type == Marker.TEXT_VIEW_FACING and labels[9].text.startswith("table #9")
    assert labels[9].pose.position.z > 0.7
    assert object_scores(msg) == {4: 0.8, 9: 0.6}  # live evaluation ranks the objects by them


def test_no_objects_clears_the_display():
    msg = object_markers([], NAMES, PALETTE, 0, "map")
    assert [m.action for m in msg.markers] == [Marker.DELETEALL]
