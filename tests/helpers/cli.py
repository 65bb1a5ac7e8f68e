"""Run a gplq_ros console module in a subprocess on the source tree."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_module(module, *args, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='2')
    return subprocess.run([sys.executable, '-m', module, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)
