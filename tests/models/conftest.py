import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module of small models: on a shared 2-core machine two threads spin
    against each other (OpenMP) and run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
