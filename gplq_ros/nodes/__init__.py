"""ROS 2 nodes and message translation. Only this layer imports rclpy / ROS messages."""
