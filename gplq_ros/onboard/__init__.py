"""Onboard logic the ROS nodes call (no rclpy, no torch): newest-frame slot, latency and
rate statistics, drift checks, the simulated flight, output message layouts."""
