"""Launch the gcross segmentation node, optionally with RViz.

    ros2 launch gcross_ros segment.launch.py checkpoint:=/path/model.safetensors camera:=/camera \
        use_rviz:=true params_file:=/path/segment.yaml device:=cuda \
        color_transport:=compressed depth_transport:=compressedDepth

The node runs in the root namespace; its camera inputs are remapped under ``camera`` (for example
``color/image_raw`` -> ``/camera/color/image_raw``), its outputs keep their relative names
(``/labelled_cloud``, ``/rendered/...``, ``/diagnostics``), which is what config/segment.rviz shows.
Launch arguments left empty keep the value from the params file; with no checkpoint at all the node
loads the bundled demo segmenter (synthetic classes; it says so in its log).

Full-size RGB-D streams between processes overflow Fast DDS's default buffers (lost or late frames and
camera_info, counted in /diagnostics). The node is started with config/fastdds.xml as its Fast DDS
profile unless FASTDDS_DEFAULT_PROFILES_FILE is already set; export the same file to the camera driver
(see the file).

``use_rviz:=true`` on a machine without rviz2 stops the launch before anything starts (exit status 1, one
error naming rviz2), rather than leaving the node running without the launch that started it; and when
the node exits (a start-up failure, or it was stopped) the launch shuts down, RViz with it.
"""
import os
import shutil

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "gcross_ros"
# the raw inputs and their image_transport compressed forms (color_transport, depth_transport)
CAMERA_TOPICS = ("color/image_raw", "depth/image_raw", "color/camera_info", "color/image_raw/compressed",
                 "depth/image_raw/compressedDepth")
PARAMETER_ARGS = ("checkpoint", "device", "pose_source", "color_transport", "depth_transport")  # launch arguments that override parameters


def _share(*parts):
    from ament_index_python.packages import get_package_share_directory

    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def _rviz2_installed() -> bool:
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix("rviz2")
        return True
    except PackageNotFoundError:
        return shutil.which("rviz2") is not None


def _actions(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context).strip()

    use_rviz = arg("use_rviz").lower() in ("true", "1", "yes", "on")
    if use_rviz and not _rviz2_installed():  # checked before the node starts, so nothing is left running
        raise RuntimeError("use_rviz:=true but rviz2 is not installed (no rviz2 package in the ament index, "
                           "no rviz2 on PATH): install ros-$ROS_DISTRO-rviz2, or launch with use_rviz:=false")

    params_file = arg("params_file") or _share("config", "segment.yaml")
    overrides = {name: arg(name) for name in PARAMETER_ARGS if arg(name)}
    camera = arg("camera").rstrip("/")
    remappings = [(topic, f"{camera}/{topic}") for topic in CAMERA_TOPICS] if camera else []
    if arg("pose_topic"):
        remappings.append(("pose", arg("pose_topic")))
    # The node gets the Fast DDS profile with buffers for full-size frames unless one is set already.
    env = {} if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") else {
        "FASTDDS_DEFAULT_PROFILES_FILE": _share("config", "fastdds.xml")}
    actions = [Node(package=PACKAGE, executable="segment_node", name="gcross_segment", output="screen",
                    parameters=[params_file, overrides], remappings=remappings, additional_env=env,
                    on_exit=Shutdown(reason="segment_node exited"))]
    if use_rviz:
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                            arguments=["-d", _share("config", "segment.rviz")]))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="Segmenter checkpoint (.safetensors); empty: the params file's "
                                          "(itself empty: the bundled demo segmenter)."),
        DeclareLaunchArgument("camera", default_value="/camera",
                              description="Namespace of the RGB-D camera topics (color/image_raw, "
                                          "depth/image_raw, color/camera_info); empty: no remapping."),
        DeclareLaunchArgument("params_file", default_value="",
                              description="Node parameters (YAML); empty: the installed config/segment.yaml."),
        DeclareLaunchArgument("use_rviz", default_value="false",
                              description="Start RViz with config/segment.rviz."),
        DeclareLaunchArgument("device", default_value="",
                              description="Torch device (cpu, cuda, cuda:N); empty: the params file's."),
        DeclareLaunchArgument("pose_source", default_value="",
                              description="topic or tf; empty: the params file's."),
        DeclareLaunchArgument("color_transport", default_value="",
                              description="raw or compressed (color/image_raw/compressed); empty: the params "
                                          "file's."),
        DeclareLaunchArgument("depth_transport", default_value="",
                              description="raw or compressedDepth (depth/image_raw/compressedDepth); empty: the "
                                          "params file's."),
        DeclareLaunchArgument("pose_topic", default_value="",
                              description="Remap the PoseStamped input `pose` to this topic; empty: `pose`."),
        OpaqueFunction(function=_actions),
    ])
