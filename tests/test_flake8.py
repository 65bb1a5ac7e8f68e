"""Style: flake8 over the package, launch files, benchmarks and tests (setup.cfg [flake8])."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_flake8():
    res = subprocess.run([sys.executable, '-m', 'flake8', 'gplq_ros', 'launch', 'benchmarks', 'tests', 'setup.py'],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]
