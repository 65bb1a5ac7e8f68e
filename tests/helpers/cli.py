"""Run gplq_ros console modules in subprocesses on the source tree."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _command(module, args):
    return [sys.executable, '-m', module, *map(str, args)]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='2')


def run_module(module, *args, timeout=900):
    return subprocess.run(_command(module, args), capture_output=True, text=True, env=_env(), timeout=timeout)


def run_modules(*calls, timeout=900):
    """Independent runs started together (most of a short run is importing torch: two cores do two
    at once); ``calls`` are ``(module, *args)`` tuples, the results come back in their order."""
    procs = [subprocess.Popen(_command(c[0], c[1:]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for c in calls]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results
