"""gcross_core: GaussianCross self-supervised 3D scene learning, ROS-free.

Importing this package is cheap and never imports rclpy, message packages, spconv or gsplat; heavy
backends load when the module that needs them is imported (``gcross_core.model.encoder``,
``gcross_core.render.gsplat_backend``).
"""
__version__ = "0.1.0"
