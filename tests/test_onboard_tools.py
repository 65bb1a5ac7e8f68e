"""The onboard console scripts (gplq_map, gplq_eval_bag, gplq_up, gplq_record) run where torch
and timm are not installed: each runs in a subprocess whose imports of torch and timm fail
(as on a drone with only requirements-onboard.txt), for its --help and a small real job."""
import json
import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
# run a module as ``python -m`` does, with every import of torch or timm failing
WITHOUT_TORCH = '''
import importlib.abc, runpy, sys
class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm'):
            raise ModuleNotFoundError(f'No module named {name!r} (hidden by the test)', name=name)
sys.meta_path.insert(0, Hidden())
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name='__main__', alter_sys=True)
'''


def run_without_torch(tool, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='2')
    res = subprocess.run([sys.executable, '-c', WITHOUT_TORCH, f'gplq_ros.tools.{tool}', *map(str, args)],
                         capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    assert 'hidden by the test' not in res.stderr, res.stderr[-3000:]
    return res


def test_help_without_torch():
    for tool in ('map', 'eval_bag', 'up', 'record'):
        res = run_without_torch(tool, '--help')
        assert res.returncode == 0 and 'usage' in res.stdout, (tool, res.stderr[-3000:])
    res = run_without_torch('up', '--print')
    assert res.returncode == 0 and 'feature_node' in res.stdout, res.stderr[-3000:]


def test_map_errors_without_torch(tmp_path):
    res = run_without_torch('map', tmp_path / 'ortho.png', '--out', tmp_path / 'm.safetensors', '--gsd', 0.1,
                            '--utm-zone', '12N')
    assert res.returncode == 2 and 'gplq_map: error: --utm-zone without --utm-origin' in res.stderr, res.stderr
    res = run_without_torch('map', tmp_path / 'ortho.png', '--out', tmp_path / 'm.safetensors', '--gsd', 0.1,
                            '--vocabulary', tmp_path / 'none.safetensors')
    assert res.returncode == 2 and 'gplq_map: error:' in res.stderr and 'none.safetensors' in res.stderr, res.stderr


def test_eval_bag_without_torch(tmp_path):
    """A small bag (camera + boundary maps, sqlite3) evaluated end to end."""
    from helpers.bags import CameraBag
    bag = tmp_path / 'flight'
    w = CameraBag(bag)
    for i in range(5):
        stamp_ns = 1_700_000_000 * 10 ** 9 + i * 100_000_000
        w.frame(stamp_ns, stamp_ns + 1_000_000)
        w.boundary(stamp_ns, stamp_ns + 30_000_000)
    w.close()
    res = run_without_torch('eval_bag', bag, '--out', tmp_path / 'r', '--frames', 1)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / 'r' / 'summary.json').read_text())
    assert (s['frames_in'], s['matched'], s['dropped']) == (5, 5, 0)
