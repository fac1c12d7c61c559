import pytest
import timm
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module of small models: on a shared 2-core machine two threads spin
    against each other (OpenMP) and run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to fetch weights fails the test (``pytestmark = pytest.mark.usefixtures("no_download")``)."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)
