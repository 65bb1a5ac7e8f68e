"""The bringup (the ROS node graph), defined once: ``launch/drone.launch.py`` turns it into
launch_ros ``Node`` actions, ``gplq_up`` into processes (launch/launch_ros are not
installable everywhere). Neither adds a node, parameter or remapping of its own.

Launch arguments (``ARGUMENTS``; ``ros2 launch gplq_ros drone.launch.py name:=value`` or
``gplq_up name:=value``) are strings, as launch passes them.
"""
import datetime
import os
import re
from importlib import metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from gplq_ros.onboard.paths import default_onboard_models, gplq_home
from gplq_ros.onboard.placemap import read_georef

PACKAGE = 'gplq_ros'
FEATURE_TOPICS = ('boundary_map', 'corner_map', 'corners', 'descriptor')


_MODELS = {k: v.replace(os.path.expanduser('~'), '~') for k, v in default_onboard_models().items()}


def argument_table() -> str:
    """The launch arguments as the README's markdown table (the README is checked against it)."""
    home = str(gplq_home())
    homes = (home, home.replace(os.path.expanduser('~'), '~'))
    rows = ['| argument | default | meaning |', '|---|---|---|']
    for a in ARGUMENTS:
        default = f'`{a.default}`' if a.default else 'empty'
        text = a.description
        for h in homes:     # the same table whatever this machine's GPLQ_HOME
            text = text.replace(h, '$GPLQ_HOME')
        rows.append(f'| `{a.name}` | {default} | {text.replace("|", "/")} |')
    return '\n'.join(rows)


@dataclass(frozen=True)
class Argument:
    name: str
    default: str
    description: str


ARGUMENTS = (
    Argument('namespace', '', 'ROS namespace of every node and topic of this graph, e.g. uav1 (one graph per '
             'vehicle); empty: the root namespace'),
    Argument('camera_topic', 'camera/image_raw', 'sensor_msgs/Image topic of the downward camera, relative to '
             'the namespace unless it starts with / (CompressedImage on <camera_topic>/compressed with transport: '
             'compressed in the params file; sensor_msgs/CameraInfo on the sibling camera_info, if published)'),
    Argument('model', '', f'onboard ONNX graph (gplq_export); empty: {_MODELS["model"]}'),
    Argument('reference_model', '', f'FP32 ONNX graph for the monitor; empty: {_MODELS["reference_model"]}'),
    Argument('params_file', '', 'one ROS parameter YAML for all nodes; empty: the package\'s '
             'config/<node>.yaml for each node (keys /**/<node> apply under any namespace; a plain <node> key only in '
             'the root namespace)'),
    Argument('use_sim_camera', 'true', 'start flight_sim_node as the camera (true/false)'),
    Argument('photos', '', 'directory of geotagged JPEG photos (a drone survey) that photo_camera_node plays as the '
             'camera instead of flight_sim_node, with their GNSS on photo_camera_node/fix and, when place_map is '
             'geo-referenced, their pose in map on photo_camera_node/true_pose; empty: no photos'),
    Argument('record_bag', 'false', 'record camera, outputs, /diagnostics and status with gplq_record '
             '(true/false)'),
    Argument('bag_dir', 'bags', 'directory for recorded bags (one sub-directory per run)'),
    Argument('log_level', 'info', 'ROS log level of every node (debug, info, warn, error, fatal)'),
    Argument('shm_profile', 'true', 'our nodes (only) use the shared-memory Fast DDS profile of config/fastdds_shm.xml '
             '(a 32 MB segment per node: give Docker --shm-size=256m); false: the DDS settings of your environment'),
    Argument('autostart', 'true', 'feature_node, monitor_node and localizer_node configure and activate themselves '
             '(true); false: they wait unconfigured for a lifecycle manager (lifecycle_msgs services ~/change_state)'),
    Argument('place_map', '', 'place map of the flight area (gplq_map): starts localizer_node, which turns the '
             'feature node\'s descriptor into a pose in map (and a NavSatFix when the map is geo-referenced); '
             'empty: no localizer'),
    Argument('odom_topic', 'odom', 'nav_msgs/Odometry for localizer_node\'s motion prediction, read when its '
             'use_odometry is true (params file), relative to the namespace unless it starts with /, e.g. '
             '/mavros/local_position/odom'),
    Argument('height_topic', 'height', 'height above ground for localizer_node, read when its use_height is true: '
             'sensor_msgs/Range (height_type range, e.g. /mavros/rangefinder/rangefinder) or std_msgs/Float64 '
             '(height_type altitude, e.g. /mavros/global_position/rel_alt)'),
    Argument('use_sim_time', 'false', 'every node takes its time from /clock (true/false), e.g. when replaying '
             'a bag with --clock'),
)


@dataclass(frozen=True)
class NodeSpec:
    executable: str                       # console script in lib/gplq_ros (ros2 run / launch_ros)
    module: str                           # python -m equivalent (gplq_up)
    name: str
    parameters: Tuple = ()                # YAML file paths (str) and dicts, applied in order
    remappings: Tuple[Tuple[str, str], ...] = ()
    ros_arguments: Tuple[str, ...] = field(default=())
    namespace: str = ''                   # '' (root) or '/uav1'


def _bool(args: Dict[str, str], name: str) -> bool:
    v = str(args[name]).strip().lower()
    if v not in ('true', 'false', '1', '0'):
        raise ValueError(f'launch argument {name}={args[name]!r}: must be true or false')
    return v in ('true', '1')


def resolve(overrides: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    names = {a.name for a in ARGUMENTS}
    unknown = sorted(set(overrides or {}) - names)
    if unknown:
        raise ValueError(f'unknown launch argument(s) {unknown}; known: {sorted(names)}')
    args = {a.name: a.default for a in ARGUMENTS}
    args.update(overrides or {})
    if args['log_level'] not in ('debug', 'info', 'warn', 'error', 'fatal'):
        raise ValueError(f'launch argument log_level={args["log_level"]!r}: one of debug, info, warn, error, fatal')
    for name in ('camera_topic', 'odom_topic', 'height_topic'):
        if not TOPIC.fullmatch(args[name]):
            raise ValueError(f'launch argument {name}={args[name]!r}: not a ROS topic name (letters, '
                             'digits, _ and / between tokens; a token does not start with a digit)')
    ns = args['namespace'].strip().strip('/')
    if ns and not TOPIC.fullmatch('/' + ns):
        raise ValueError(f'launch argument namespace={args["namespace"]!r}: not a ROS namespace (e.g. uav1 or '
                         '/fleet/uav1)')
    args['namespace'] = '/' + ns if ns else ''
    for name in PATH_ARGUMENTS:    # `model:=~/x.onnx`: the shell leaves the ~ of name:=~/... alone
        args[name] = os.path.expanduser(args[name]) if args[name] else ''
    _bool(args, 'use_sim_camera')
    _bool(args, 'record_bag')
    _bool(args, 'autostart')
    _bool(args, 'shm_profile')
    return args


PATH_ARGUMENTS = ('model', 'reference_model', 'params_file', 'bag_dir', 'place_map', 'photos')
TOPIC = re.compile(r'/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*')


def qualified(args: Dict[str, str], topic: str) -> str:
    """A topic name of the graph as seen from outside it (relative names are in the namespace)."""
    return topic if topic.startswith('/') else f'{args["namespace"]}/{topic}'


def camera_info_topic(image_topic: str) -> str:
    """The CameraInfo topic beside an image topic (image_transport's rule: the sibling camera_info)."""
    head, _, _ = image_topic.rpartition('/')
    return f'{head}/camera_info' if head or image_topic.startswith('/') else 'camera_info'


def config_dir() -> Path:
    """The installed share/gplq_ros/config, else this source tree's config/."""
    try:   # optional: ament_index_python exists where ROS does, not in a plain checkout
        from ament_index_python.packages import get_package_share_directory
        d = Path(get_package_share_directory(PACKAGE)) / 'config'
        if d.is_dir():
            return d
    except (ImportError, LookupError, ValueError, OSError):   # OSError: AMENT_PREFIX_PATH not set
        pass
    return Path(__file__).resolve().parents[2] / 'config'


PROFILE_VARS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')


def fastdds_major() -> int:
    """Fast DDS 2.x (Humble, Jazzy) or 3.x (Kilted and later): from ROS_DISTRO in a ROS
    install, else from the PyPI wheels present (ros-fastdds is 3.x, ros-fastrtps 2.x)."""
    distro = os.environ.get('ROS_DISTRO')
    if distro:
        return 2 if distro in ('humble', 'iron', 'jazzy') else 3
    try:
        metadata.version('ros-fastdds')
        return 3
    except metadata.PackageNotFoundError:
        return 2


def environment(args: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Variables our node processes need when the user has not set them (the launch file
    sets them on our nodes only, not on the rest of a bringup that includes it; none with
    ``shm_profile:=false``): the shared-memory Fast DDS
    profile (without it, best-effort 640x480 rgb8 frames did not get through here: they
    exceed the default shared-memory segment and fall back to fragmented UDP). Fast DDS 2.x
    reads FASTRTPS_DEFAULT_PROFILES_FILE (the FASTDDS_ name did nothing on Jazzy), 3.x reads
    FASTDDS_DEFAULT_PROFILES_FILE (and warns that the FASTRTPS_ name is deprecated). A
    profile the user set under either name is kept."""
    if any(os.environ.get(k) for k in PROFILE_VARS) or not _bool(resolve(args), 'shm_profile'):
        return {}
    return {PROFILE_VARS[0] if fastdds_major() == 2 else PROFILE_VARS[1]: str(config_dir() / 'fastdds_shm.xml')}


def photo_georef(args: Dict[str, str]) -> dict:
    """photo_camera_node's georeference parameters (``utm_zone``, ``utm_origin_e``,
    ``utm_origin_n``) from the place map's, so that its ``~/true_pose`` is in the localizer's map
    frame; {} without a place map or when the map has no georeference."""
    if not args['place_map']:
        return {}
    try:
        geo = read_georef(Path(args['place_map']))       # the map's metadata only
    except ValueError as e:
        raise ValueError(f'launch argument place_map={args["place_map"]!r}: {e}') from None
    if geo is None:
        return {}
    return {'utm_zone': f'{geo.zone}{"N" if geo.north else "S"}', 'utm_origin_e': float(geo.origin_e),
            'utm_origin_n': float(geo.origin_n)}


def node_specs(args: Dict[str, str]) -> List[NodeSpec]:
    args = resolve(args)
    cam = args['camera_topic']
    model = args['model'] or default_onboard_models()['model']
    reference = args['reference_model'] or default_onboard_models()['reference_model']
    ros_args = ('--log-level', args['log_level'])
    sim_time = _bool(args, 'use_sim_time')
    autostart = _bool(args, 'autostart')

    def params(node: str, extra: dict) -> tuple:
        f = args['params_file'] or str(config_dir() / f'{node}.yaml')
        return (f, dict(extra, use_sim_time=sim_time))
    ns = args['namespace']
    specs = []
    if args['photos']:
        specs.append(NodeSpec('photo_camera_node', 'gplq_ros.nodes.photo_camera_node', 'photo_camera_node',
                              # the first photo waits for the feature node (it loads its model first)
                              params('photo_camera_node', dict(photo_georef(args), photos=args['photos'],
                                                               wait_for_node='feature_node')),
                              (('image', cam), ('camera_info', camera_info_topic(cam))), ros_args, ns))
    elif _bool(args, 'use_sim_camera'):
        specs.append(NodeSpec('flight_sim_node', 'gplq_ros.nodes.flight_sim_node', 'flight_sim_node',
                              params('flight_sim_node', {}), (('image', cam),), ros_args, ns))
    specs.append(NodeSpec('feature_node', 'gplq_ros.nodes.feature_node', 'feature_node',
                          params('feature_node', {'model': model, 'autostart': autostart}),
                          (('image', cam), ('image/compressed', cam + '/compressed'),
                           ('camera_info', camera_info_topic(cam))), ros_args, ns))
    # relative names: the monitor reads the outputs of the feature node of its own namespace
    specs.append(NodeSpec('monitor_node', 'gplq_ros.nodes.monitor_node', 'monitor_node',
                          params('monitor_node', {'reference_model': reference, 'autostart': autostart}),
                          (('image', cam), ('camera_info', camera_info_topic(cam)))
                          + tuple((t, f'feature_node/{t}') for t in FEATURE_TOPICS if t != 'corner_map'),
                          ros_args, ns))
    if args['place_map']:
        specs.append(NodeSpec('localizer_node', 'gplq_ros.nodes.localizer_node', 'localizer_node',
                              params('localizer_node', {'map': args['place_map'], 'autostart': autostart}),
                              (('descriptor', 'feature_node/descriptor'),
                               ('boundary_map', 'feature_node/boundary_map'),
                               ('verify_image', 'feature_node/verify_image'),
                               ('odom', args['odom_topic']), ('height', args['height_topic'])), ros_args, ns))
    return specs


def record_topics(args: Dict[str, str]) -> List[str]:
    args = resolve(args)
    topics = [args['camera_topic']] + \
        [f'feature_node/{t}' for t in FEATURE_TOPICS + ('camera_info', 'verify_image')] + \
        ['monitor_node/status']
    if args['place_map']:
        topics += ['localizer_node/pose', 'localizer_node/fix']
    if args['photos']:   # true_pose only appears with a georeference; gplq_record subscribes when it does
        topics += ['photo_camera_node/fix', 'photo_camera_node/true_pose', camera_info_topic(args['camera_topic'])]
    elif _bool(args, 'use_sim_camera'):
        topics += ['flight_sim_node/true_pose', camera_info_topic(args['camera_topic'])]
    return [qualified(args, t) for t in topics] + ['/diagnostics']


def record_command(args: Dict[str, str], stamp: Optional[str] = None) -> Optional[List[str]]:
    """``gplq_record`` arguments (without the program) when ``record_bag`` is true."""
    args = resolve(args)
    if not _bool(args, 'record_bag'):
        return None
    stamp = stamp or datetime.datetime.now().strftime('%Y%m%d_%H%M%S')
    # receipt times on the nodes' clock: with a replayed bag's /clock the latencies stay meaningful
    sim = ['--ros-args', '-p', 'use_sim_time:=true'] if _bool(args, 'use_sim_time') else []
    return ['--out', os.path.join(args['bag_dir'], f'gplq_{stamp}'), '--topics', *record_topics(args), *sim]


def ros_argv(spec: NodeSpec) -> List[str]:
    """The ``--ros-args`` of one node as ``ros2 run`` would take them."""
    out = ['--ros-args', '-r', f'__node:={spec.name}', *spec.ros_arguments]
    if spec.namespace:
        out += ['-r', f'__ns:={spec.namespace}']
    for p in spec.parameters:
        if isinstance(p, dict):
            for k, v in p.items():
                out += ['-p', f'{k}:={v}']
        else:
            out += ['--params-file', str(p)]
    for a, b in spec.remappings:
        out += ['-r', f'{a}:={b}']
    return out
