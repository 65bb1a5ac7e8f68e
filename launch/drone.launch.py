"""ros2 launch gplq_ros drone.launch.py [camera_topic:=...] [model:=...] [use_sim_camera:=false] ...

Starts the bringup (node graph) defined in ``gplq_ros.bringup.description`` (the same definition ``gplq_up``
runs): flight_sim_node (optional camera), feature_node, monitor_node, localizer_node when
place_map:= names a map, and gplq_record when record_bag:=true. Arguments, descriptions and defaults
come from ``gplq_ros.bringup.description.ARGUMENTS``.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from gplq_ros.bringup import description as bringup


def _bringup(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in bringup.ARGUMENTS}
    env = bringup.environment(values)   # on our nodes only: the rest of an including bringup keeps its DDS setup
    actions = []
    for node in bringup.node_specs(values):
        actions.append(Node(package=bringup.PACKAGE, executable=node.executable, name=node.name,
                            namespace=node.namespace or None,
                            parameters=list(node.parameters), remappings=list(node.remappings),
                            arguments=['--ros-args', *node.ros_arguments], output='screen', emulate_tty=True,
                            additional_env=env))
    record = bringup.record_command(values)
    if record is not None:
        # launch_ros appends --ros-args -r __ns:=... ; gplq_record passes them to rclpy (its topics are absolute)
        actions.append(Node(package=bringup.PACKAGE, executable='gplq_record', name='gplq_record', arguments=record,
                            output='screen', namespace=bringup.resolve(values)['namespace'] or None,
                            additional_env=env))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
         for a in bringup.ARGUMENTS]
        + [OpaqueFunction(function=_bringup)])
