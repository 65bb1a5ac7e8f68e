"""ros2 launch gplq_ros drone.launch.py [camera_topic:=...] [model:=...] [use_sim_camera:=false] ...

Starts the onboard graph defined in ``gplq_ros.graph`` (the same definition ``gplq_up``
runs): flight_sim_node (optional camera), feature_node, monitor_node, and gplq_record when
record_bag:=true. Arguments, descriptions and defaults come from ``gplq_ros.graph.ARGUMENTS``.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from gplq_ros import graph


def _graph(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in graph.ARGUMENTS}
    actions = [SetEnvironmentVariable(k, v) for k, v in graph.environment().items()]
    for spec in graph.node_specs(values):
        actions.append(Node(package=graph.PACKAGE, executable=spec.executable, name=spec.name,
                            parameters=list(spec.parameters), remappings=list(spec.remappings),
                            arguments=['--ros-args', *spec.ros_arguments], output='screen', emulate_tty=True))
    record = graph.record_command(values)
    if record is not None:
        actions.append(Node(package=graph.PACKAGE, executable='gplq_record', arguments=record, output='screen'))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
         for a in graph.ARGUMENTS]
        + [OpaqueFunction(function=_graph)])
