"""TEST-ONLY stand-in for the ROS 2 package composition_interfaces (gplq_ros tests/stand-ins).

It exists so that ``import launch_ros`` works in a venv of PyPI wheels, where the real
message package cannot be installed; it carries no message definitions. See
tests/stand-ins/README.md in the gplq_ros repository.
"""
STAND_IN = True
