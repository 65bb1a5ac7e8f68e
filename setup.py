"""ament_python package definition for gplq_ros (also installable with pip)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'gplq_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='gplq_ros maintainers',
    maintainer_email='maintainers@gplq-ros.invalid',
    description='GPLQ-quantized DINOv2 features for onboard drone perception.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'feature_node = gplq_ros.nodes.feature_node:main',
            'monitor_node = gplq_ros.nodes.monitor_node:main',
            'flight_sim_node = gplq_ros.nodes.flight_sim_node:main',
            'photo_camera_node = gplq_ros.nodes.photo_camera_node:main',
            'localizer_node = gplq_ros.nodes.localizer_node:main',
            'gplq_map = gplq_ros.tools.map:main',
            'gplq_up = gplq_ros.tools.up:main',
            'gplq_record = gplq_ros.tools.record:main',
            'gplq_eval_bag = gplq_ros.tools.eval_bag:main',
            'gplq_flight_demo = gplq_ros.tools.flight_demo:main',
            'gplq_assets = gplq_ros.tools.assets:main',
            'gplq_vocab = gplq_ros.tools.vocab:main',
            'gplq_demo = gplq_ros.tools.demo:main',
            'gplq_calibrate = gplq_ros.tools.calibrate:main',
            'gplq_fidelity = gplq_ros.tools.fidelity:main',
            'gplq_export = gplq_ros.tools.export:main',
            'gplq_bench = gplq_ros.tools.bench:main',
            'gplq_fidelity_onboard = gplq_ros.tools.fidelity_onboard:main',
            'gplq_georef = gplq_ros.tools.georef:main',
        ],
    },
)
