"""The multi-device tests need 8 CPU devices, and JAX fixes its device count when it first uses a backend: they run
in a pytest process of their own, one per test file, while the rest of the suite keeps one device per process (the
training loop uses every device JAX sees).

Any pytest session (``pytest``, ``pytest tests/multidevice/test_mesh.py``, ``pytest -k mesh``, under xdist too)
collects these tests as usual, so node ids, ``-k``, ``-m``, ``--lf`` and ``--collect-only`` behave as for any test.
After selection each one is swapped for an ``InEightDevices`` item: the first of a file to run starts
``python -m pytest <the file's selected tests>`` with ``CHIMERA_TEST_DEVICES=8`` (this conftest, in that process,
sets the 8 devices and XLA's backend optimisations off before JAX starts) and each item then reports what its test
did there, phase by phase, with that process's durations. Under xdist, ``--dist loadfile`` (the Makefile's) keeps a
file on one worker; with another ``--dist``, each worker given some of a file's tests runs all of them (correct, but
twice the work). ``CHIMERA_TEST_DEVICES=8 pytest tests/multidevice/...`` runs them in-process (for ``--pdb``). Every
test here is marked ``slow``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

from chimera_jax import data
from chimera_jax.config import MeshConfig, RunConfig, resolve_config
from chimera_jax.train.mesh import make_mesh, place_batch, shard_state
from chimera_jax.train.optimizer import lr_schedule, make_optimizer
from chimera_jax.train.state import TrainerState, init_state
from chimera_jax.train.step import make_train_step

DEVICES = 8
HERE = Path(__file__).resolve().parent
IN_PROCESS = os.environ.get("CHIMERA_TEST_DEVICES") == str(DEVICES)  # set for the per-file process; else a launcher
REPORT = os.environ.get("CHIMERA_TEST_REPORT")  # where that process writes each report for the launching session

if IN_PROCESS:
    # Compiling dominates these tests: XLA's backend optimisations off halve it (set before JAX starts a backend).
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    try:
        jax.config.update("jax_num_cpu_devices", DEVICES)  # refused once a backend is in use: the count check says so
    except RuntimeError:
        pass
    if len(jax.devices()) < DEVICES:
        pytest.exit(f"tests/multidevice needs {DEVICES} devices and found {len(jax.devices())}: JAX started a "
                    f"backend before this conftest; run it without CHIMERA_TEST_DEVICES (a process of its own)",
                    returncode=1)


def pytest_itemcollected(item):
    item.add_marker(pytest.mark.slow)  # a process of its own and XLA compiles on 8 devices: never in test-fast


# --- the launching session: each selected test becomes a report of the per-file 8-device process -----------------


class InEightDevices(pytest.Item):
    """A test of this folder, run by its file's 8-device pytest process (started by the first of them to run)."""

    def __init__(self, *, original: pytest.Item, **kwargs):
        super().__init__(**kwargs)
        self.own_markers = [pytest.mark.timeout(0).mark, *original.own_markers]  # the process has its own timeouts
        self.keywords.update(original.keywords)
        self.extra_keyword_matches.update(original.extra_keyword_matches)
        self._reportinfo = original.reportinfo()

    def reportinfo(self):
        return self._reportinfo

    def _replay(self, when: str) -> dict | None:
        """Raise what the test's ``when`` phase raised in the 8-device process; its report entry."""
        run = file_run(self)
        phases = run["reports"].get(self.nodeid)
        if phases is None:
            if when != "setup":
                return None
            pytest.fail(f"the 8-device pytest process of {self.path.name} ({run['status']}) did not report this "
                        f"test; its output ends:\n{run['tail']}", pytrace=False)
        entry = phases.get(when)
        if entry is None:  # the process ended inside the test (the body, or its teardown once the body was done)
            if when == "call" or "call" in phases:
                pytest.fail(f"the 8-device pytest process of {self.path.name} ({run['status']}) ended inside "
                            f"this test; its output ends:\n{run['tail']}", pytrace=False)
            return None
        if entry["outcome"] == "failed":
            pytest.fail(entry["text"], pytrace=False)
        if entry["outcome"] == "skipped":
            if entry["wasxfail"] is not None:
                pytest.xfail(entry["wasxfail"])
            raise pytest.skip.Exception(entry["text"], _use_item_location=True)  # reported at the test, as here
        return entry

    def setup(self):
        self._replay("setup")

    def runtest(self):
        self._replay("call")

    def teardown(self):
        self._replay("teardown")


FILE_RUNS: dict[Path, dict] = {}


def file_run(item: InEightDevices) -> dict:
    """Run the selected tests of ``item``'s file in a pytest process with 8 devices, once per file and session."""
    if item.path in FILE_RUNS:
        return FILE_RUNS[item.path]
    config = item.config
    nodeids = [i.nodeid for i in item.session.items if isinstance(i, InEightDevices) and i.path == item.path]
    per_test = config.getvalue("timeout") or float(config.getini("timeout") or 0) or 900
    with tempfile.TemporaryDirectory(prefix="multidevice-") as tmp:
        report = Path(tmp) / "reports.jsonl"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp}/basetemp",
                   f"--tb={config.option.tbstyle}", *(f"--override-ini={o}" for o in config.option.override_ini or ()),
                   *([f"--timeout={config.getvalue('timeout')}"] if config.getvalue("timeout") else []), *nodeids]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
        env.update(CHIMERA_TEST_DEVICES=str(DEVICES), CHIMERA_TEST_REPORT=str(report))
        try:
            proc = subprocess.run(command, cwd=config.rootpath, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=per_test * (len(nodeids) + 1))
            status, output = f"exit code {proc.returncode}", proc.stdout
        except subprocess.TimeoutExpired as err:
            status = f"killed after {err.timeout:.0f} s"
            output = err.output.decode(errors="replace") if isinstance(err.output, bytes) else err.output or ""
        reports: dict[str, dict] = {}
        for line in report.read_text().splitlines() if report.exists() else ():
            entry = json.loads(line)
            reports.setdefault(entry["nodeid"], {})[entry["when"]] = entry
    FILE_RUNS[item.path] = {"reports": reports, "status": status, "tail": "\n".join(output.splitlines()[-60:])}
    return FILE_RUNS[item.path]


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items):
    """After selection (``-k``, ``-m``, ``--lf``, ...), this folder's tests become ``InEightDevices`` items with the
    same node ids, names, keywords and markers (unless this is the 8-device process itself)."""
    result = yield
    if not IN_PROCESS:
        items[:] = [InEightDevices.from_parent(item.parent, name=item.name, original=item)
                    if isinstance(item, pytest.Function) and HERE in item.path.parents else item for item in items]
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """An ``InEightDevices`` phase lasts what it lasted in the 8-device process (``--durations`` lists those)."""
    report = yield
    if isinstance(item, InEightDevices) and item.path in FILE_RUNS:
        entry = FILE_RUNS[item.path]["reports"].get(item.nodeid, {}).get(call.when)
        if entry is not None:
            report.duration = entry["duration"]
    return report


if REPORT and IN_PROCESS:

    def pytest_runtest_logreport(report):
        """In the 8-device process: each phase's outcome, text and duration, a JSON line for the launching session."""
        if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            text = report.longrepr[2]  # (path, line, reason)
        else:
            text = "\n\n".join([report.longreprtext, *(f"--- {title} ---\n{content}"
                                                       for title, content in report.sections)]).strip()
        entry = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "duration": report.duration,
                 "text": text, "wasxfail": getattr(report, "wasxfail", None)}
        with open(REPORT, "a") as f:
            f.write(json.dumps(entry) + "\n")


# --- the 8-device process: what the tests share ------------------------------------------------------------------

# A tiny run every test here shares: 10 steps of 8 sequences, one per device.
TINY = ("--train.steps", "10", "--train.batch_size", "8", "--train.checkpoint_every", "10", "--train.eval_every", "10")
MOE = ("--model.moe.enabled", "true", "--model.moe.num_experts", "4", "--model.moe.d_ff", "64")


@pytest.fixture
def run_config(tiny_config):
    """``run_config(*flags, moe=False, run_dir=None)``: the shared tiny run (a tiny MoE with ``moe``) plus ``flags``."""
    return lambda *flags, moe=False, run_dir=None: tiny_config(*TINY, *(MOE if moe else ()), *flags, run_dir=run_dir)


def train_steps(cfg: RunConfig, devices: list[jax.Device]) -> tuple[list[dict], TrainerState]:
    """The training loop's own pieces (state placed, batches placed, donated step) on a mesh of ``devices``,
    without its evaluation and files: ``(every step's metrics on the host, final state)``."""
    cfg = resolve_config(cfg, 256)
    mesh = make_mesh(cfg, devices)
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    state = shard_state(init_state(cfg, optimizer), mesh)
    step = make_train_step(cfg, optimizer, lr_schedule(cfg.optim, cfg.train.steps), donate=True, mesh=mesh)
    tokens = data.load_stream(cfg.data, "train").tokens
    history = []
    for i in range(cfg.train.steps):
        state, metrics = step(state, *place_batch(tokens, cfg, i, mesh))
        history.append(jax.device_get(metrics))
    return history, state


@pytest.fixture(scope="session")
def single_device_metrics():
    """``single_device_metrics(cfg)``: every step's metrics of ``cfg`` trained on one device, computed once per
    config."""
    cache: dict[str, list[dict]] = {}

    def history(cfg: RunConfig) -> list[dict]:
        cfg = dataclasses.replace(cfg, mesh=MeshConfig(), train=dataclasses.replace(cfg.train, run_dir=None))
        key = repr(cfg)
        if key not in cache:
            cache[key] = train_steps(cfg, jax.devices()[:1])[0]
        return cache[key]

    return history


@pytest.fixture
def single_device_losses(single_device_metrics):
    """``single_device_losses(cfg)``: the losses of ``cfg`` trained on one device."""
    return lambda cfg: [metrics["loss"] for metrics in single_device_metrics(cfg)]


@pytest.fixture(name="train_steps")
def train_steps_fixture():
    """``train_steps(cfg, devices) -> (every step's metrics, final state)``."""
    return train_steps
