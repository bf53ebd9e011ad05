"""The serving replicas' worker setup hook: named by every Serve config under the variable Ray
reads, and it keeps pandas and pyarrow out of a process that imports Serve, without taking them
away from code that asks for them later. No Ray cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from maas.serving.replica_setup import SETUP_HOOK, SETUP_HOOK_ENV_VAR
from tests.conftest import REPO


def test_every_serve_config_names_the_hook_under_rays_variable() -> None:
    from ray._common.utils import load_class
    from ray._private import ray_constants

    assert ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR == SETUP_HOOK_ENV_VAR
    assert callable(load_class(SETUP_HOOK))  # what Ray's default worker does with the value
    configs = sorted((REPO / "configs" / "serve").glob("*.yaml"))
    assert configs
    for path in configs:
        for app in yaml.safe_load(path.read_text())["applications"]:
            assert app["runtime_env"]["env_vars"][SETUP_HOOK_ENV_VAR] == SETUP_HOOK, path.name


LEAN_IMPORT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ray._common.utils import load_class
load_class(sys.argv[2])()
from ray import serve
import ray.serve._private.utils as serve_utils

@serve.deployment  # Serve makes a serialization context here: Ray's addons would import pyarrow
class Probe:
    pass

before = {name: name in sys.modules for name in ("pandas", "pyarrow")}
import pandas, pyarrow  # still importable afterwards
serve_utils.ensure_serialization_context()  # and with pyarrow loaded, Ray's Arrow addons register
print(json.dumps({**before, "serve_pandas": serve_utils.pd is not None}))
"""


def test_serve_imports_without_pandas_or_pyarrow_which_stay_importable() -> None:
    done = subprocess.run([sys.executable, "-c", LEAN_IMPORT, str(REPO), SETUP_HOOK],
                          capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"pandas": False, "pyarrow": False, "serve_pandas": False}


def test_the_hook_leaves_a_process_that_already_has_pandas_alone(tmp_path: Path) -> None:
    script = ("import sys, pandas\nsys.path.insert(0, sys.argv[1])\n"
              "from maas.serving.replica_setup import keep_serve_lean\nkeep_serve_lean()\n"
              "import ray.serve._private.utils as u\nprint(u.pd is pandas)")
    done = subprocess.run([sys.executable, "-c", script, str(REPO)], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "True"
