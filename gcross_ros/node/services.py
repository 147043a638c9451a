"""The segmentation node's services (std_srvs), in the node's private namespace (``/gcross_segment/...``).

  ~/save_map           std_srvs/Trigger: write the map to ``save_map_path`` (gcross_core.mapping.map_io:
                       map.ply, map.json, scene/), atomically; the message names the folder, or says why
                       it could not be written (the node keeps running either way).
  ~/reset_map          std_srvs/Trigger: clear the map (an empty labelled_cloud is published).
  ~/pause_integration  std_srvs/SetBool: data=true stops fusing frames into the map, false resumes;
                       segmentation and rendering go on (at the latest camera pose).
  ~/segment_now        std_srvs/Trigger: segment the map now and publish labelled_cloud, without waiting
                       for segment_period_s (useful with bags and in tests).

The node spins on a single-threaded executor (its camera callbacks only assemble frames: rclpy's
multi-threaded executor spent 40 % of the interpreter lock spinning while a callback ran, and starved
fusion). A call such as segment_now of a large map takes seconds, so the services live on a companion
node, ``<node>_services`` in the node's namespace, spun by an executor on a thread of its own
(:class:`ServiceHost`); the service names are the node's. The work is done by the node's methods of
the same names, which return ``(success, message)``.
"""
from __future__ import annotations

import threading
from typing import Callable, Tuple

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from std_srvs.srv import SetBool, Trigger

Outcome = Tuple[bool, str]
SERVICE_NAMES = ("save_map", "reset_map", "pause_integration", "segment_now")


def _answer(response, work: Callable[[], Outcome]):
    try:
        response.success, response.message = work()
    except Exception as e:  # a failed call is answered, never allowed to take the node down
        response.success, response.message = False, f"{type(e).__name__}: {e}"
    return response


class ServiceHost:
    """The services of ``node`` (a SegmentNode: save_map, reset_map, pause_integration(bool), segment_now,
    each returning (success, message)) on a companion node spun on a thread of its own."""

    def __init__(self, node):
        # Not the process's ROS arguments: a node-name remap meant for the node must not rename this one.
        self.node = rclpy.create_node(f"{node.get_name()}_services", namespace=node.get_namespace(),
                                      context=node.context, use_global_arguments=False,
                                      start_parameter_services=False)
        base = node.get_fully_qualified_name()
        for name in ("save_map", "reset_map", "segment_now"):
            work = getattr(node, name)
            self.node.create_service(Trigger, f"{base}/{name}",
                                     lambda request, response, work=work: _answer(response, work))
        self.node.create_service(SetBool, f"{base}/pause_integration",
                                 lambda request, response: _answer(response, lambda: node.pause_integration(request.data)))
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"{node.get_name()}_services", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass
        except Exception:  # the context went down under the executor (SIGTERM): that is the shutdown
            if self.node.context.ok():
                raise

    def close(self, timeout_s: float = 10.0) -> None:
        self.executor.shutdown(timeout_sec=timeout_s)
        self._thread.join(timeout_s)
        self.node.destroy_node()
