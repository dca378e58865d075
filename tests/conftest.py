import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "methods"))


def run_script(script, *args, cwd, timeout=600):
    """Run a method script as a user would, in `cwd` (its runs/ goes there); returns CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run(tmp_path):
    return lambda script, *args, **kw: run_script(script, *args, cwd=kw.pop("cwd", tmp_path), **kw)
