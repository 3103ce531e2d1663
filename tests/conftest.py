"""The suite's set-up: one thread, the `slow` marker, slow tests first under pytest-xdist, and the fixtures of
tiny.py and tiny_checkpoints.py in every process that runs tests. pytest-xdist's controller (`-n`) only hands tests
out: it does not import them, nor torch, and so starts its workers about 2 s sooner."""
import atexit
import gc
import os
import sys
from pathlib import Path

# Tiny models gain nothing from a second thread, and on a busy CPU its synchronisation costs seconds.
# Set before torch is imported, so that the scripts the tests launch inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    # At exit, after pytest's own clean-up: Python's last garbage collection would walk every object torch and the
    # tests created (half a second per process); frozen, it skips them.
    atexit.register(gc.freeze)
    config.addinivalue_line("markers", "slow: launches interpreters or trains; run by CI, skip with -m 'not slow'")
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        for plugin in ("tiny", "tiny_checkpoints"):  # session fixtures: built once per session
            config.pluginmanager.import_plugin(plugin)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`-n`), the slow tests are handed out first, so that none of them starts last and runs
    alone while the other workers idle. A plain run keeps the file order (and each module fixture built once)."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
