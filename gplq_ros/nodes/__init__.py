"""ROS 2 nodes (rclpy): each wires messages to ``gplq_ros.onboard``; only this layer and the
console scripts import rclpy."""
