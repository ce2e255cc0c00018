"""The tuned-malloc re-execution: the settings reach the restarted process, which keeps its PID."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from chimera_jax.malloc import TUNED

SHOW = "import os; print(os.getpid(), os.environ.get('MALLOC_ARENA_MAX'), os.environ.get('MALLOC_MMAP_MAX_'))"
REEXEC = f"from chimera_jax.malloc import reexec_with_tuned_malloc; reexec_with_tuned_malloc(); {SHOW}"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings: Linux only")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TUNED and k != "CHIMERA_MALLOC"}
    return {**env, **extra}


def test_reexec_sets_the_environment_and_keeps_the_pid():
    proc = subprocess.Popen([sys.executable, "-c", REEXEC], env=_env(), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.split() == [str(proc.pid), TUNED["MALLOC_ARENA_MAX"], TUNED["MALLOC_MMAP_MAX_"]]


def test_switched_off_it_does_nothing():
    out = subprocess.run([sys.executable, "-c", REEXEC], env=_env(CHIMERA_MALLOC="off"), capture_output=True,
                         text=True, check=True).stdout
    assert out.split()[1:] == ["None", "None"]


def test_module_runs_a_command_with_the_settings():
    out = subprocess.run([sys.executable, "-m", "chimera_jax.malloc", sys.executable, "-c", SHOW], env=_env(),
                         capture_output=True, text=True, check=True).stdout
    assert out.split()[1:] == [TUNED["MALLOC_ARENA_MAX"], TUNED["MALLOC_MMAP_MAX_"]]
