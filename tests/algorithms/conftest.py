import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use tiny tensors: one intra-op thread is fastest, and keeps them fast when the
    machine is busy (with 2 threads on a loaded 2-core box each parallel op waits ~8 ms for the
    second thread to be scheduled). Restored afterwards so other test folders are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
