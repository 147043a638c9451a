"""gcross_ros: ROS 2 glue around gcross_core (segmentation node, message conversions, bag tools)."""
__version__ = "0.1.0"
