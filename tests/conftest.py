"""Test configuration: offline, deterministic, every cache in a temporary folder."""
import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="mabp-tests-")
for _var in ("GRADIO_TEMP_DIR", "MPLCONFIGDIR", "HF_HOME", "XDG_CACHE_HOME"):
    os.environ[_var] = os.path.join(_TMP, _var.lower())
    os.makedirs(os.environ[_var], exist_ok=True)
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny-model tests (`pytestmark = usefixtures("single_thread")`):
    their ops are too small to split, and on a shared 2-core machine OpenMP threads waiting for each other
    made them 4-100x slower (measured). The suite's setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer than the default suite allows (run with -m slow)")
