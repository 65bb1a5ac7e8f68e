"""Packaging: ament index, package.xml, data_files, layering (no torch/rclpy below nodes)."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ament_index_finds_the_installed_package():
    from ament_index_python.packages import get_package_share_directory
    share = Path(get_package_share_directory('gplq_ros'))
    assert (share / 'package.xml').read_text() == (REPO / 'package.xml').read_text()


def test_package_xml_format3_ament_python():
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.get('format') == '3' and root.findtext('name') == 'gplq_ros'
    deps = {e.text for e in root.findall('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'std_msgs', 'geometry_msgs', 'diagnostic_msgs'} <= deps
    assert root.find('export/build_type').text == 'ament_python'


def test_setup_installs_ros_layout():
    text = (REPO / 'setup.py').read_text()
    for piece in ("'share/ament_index/resource_index/packages'", "glob('launch/*.py')",
                  "glob('config/*.yaml')", "['package.xml']"):
        assert piece in text
    cfg = (REPO / 'setup.cfg').read_text()
    assert 'script_dir=$base/lib/gplq_ros' in cfg and 'install_scripts=$base/lib/gplq_ros' in cfg
    assert (REPO / 'resource' / 'gplq_ros').is_file()


ONBOARD_MODULES = ['gplq_ros.model.preprocess', 'gplq_ros.model.heads', 'gplq_ros.model.vocab',
                   'gplq_ros.model.pipeline', 'gplq_ros.nodes.image_codec', 'gplq_ros.quant',
                   'gplq_ros.gplq', 'gplq_ros.runtime', 'gplq_ros.paths', 'gplq_ros.quant.packing',
                   'gplq_ros.quant.spec', 'gplq_ros.runtime.artifact', 'gplq_ros.gplq.config',
                   'gplq_ros.runtime.engine']


@pytest.mark.parametrize('module', ONBOARD_MODULES)
def test_onboard_modules_import_without_torch_or_rclpy(module):
    code = (f'import sys, {module}; bad = [m for m in ("torch", "timm", "rclpy") if m in sys.modules]; '
            'print(bad); sys.exit(1 if bad else 0)')
    res = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stdout + res.stderr


def test_console_scripts_installed():
    bindir = Path(sys.executable).parent
    for name in ('gplq_assets', 'gplq_vocab', 'gplq_demo', 'gplq_calibrate', 'gplq_fidelity', 'gplq_export',
                 'gplq_bench'):
        res = subprocess.run([str(bindir / name), '--help'], capture_output=True, text=True)
        assert res.returncode == 0 and 'usage' in res.stdout, name
