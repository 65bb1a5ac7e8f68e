"""Test-only stand-in for composition_interfaces (see ../README.md); installed by `make setup`."""
from setuptools import setup

setup(
    name='gplq-ros-test-stand-in-composition-interfaces',
    version='0.0.0',
    description='TEST-ONLY placeholder: lets launch_ros import; not the ROS 2 composition_interfaces messages',
    packages=['composition_interfaces'],
)
