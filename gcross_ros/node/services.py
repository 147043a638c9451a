"""The segmentation node's services (std_srvs), in the node's private namespace (``/gcross_segment/...``).

  ~/save_map           std_srvs/Trigger: write the map to ``save_map_path`` (gcross_core.mapping.map_io:
                       map.ply, map.json, scene/), atomically; the message names the folder, or says why
                       it could not be written (the node keeps running either way).
  ~/reset_map          std_srvs/Trigger: clear the map (an empty labelled_cloud is published).
  ~/pause_integration  std_srvs/SetBool: data=true stops fusing frames into the map, false resumes;
                       segmentation and rendering go on (at the latest camera pose).
  ~/segment_now        std_srvs/Trigger: segment the map now and publish labelled_cloud, without waiting
                       for segment_period_s (useful with bags and in tests).

The services have a callback group of their own, so a call is answered while camera callbacks run. The
work is done by the node's methods of the same names, which return ``(success, message)``.
"""
from __future__ import annotations

from typing import Callable, Tuple

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from std_srvs.srv import SetBool, Trigger

Outcome = Tuple[bool, str]
SERVICE_NAMES = ("save_map", "reset_map", "pause_integration", "segment_now")


def _answer(response, work: Callable[[], Outcome]):
    try:
        response.success, response.message = work()
    except Exception as e:  # a failed call is answered, never allowed to take the node down
        response.success, response.message = False, f"{type(e).__name__}: {e}"
    return response


def create_services(node) -> None:
    """Create the services on ``node`` (a SegmentNode: save_map, reset_map, pause_integration(bool),
    segment_now, each returning (success, message))."""
    group = MutuallyExclusiveCallbackGroup()
    for name in ("save_map", "reset_map", "segment_now"):
        work = getattr(node, name)
        node.create_service(Trigger, f"~/{name}", lambda request, response, work=work: _answer(response, work),
                            callback_group=group)
    node.create_service(SetBool, "~/pause_integration",
                        lambda request, response: _answer(response, lambda: node.pause_integration(request.data)),
                        callback_group=group)
