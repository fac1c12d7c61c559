import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

CUDA = torch.cuda.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))])
def device(request) -> torch.device:
    """Every device the machine has: CPU always, CUDA when present (module and network tests take it)."""
    return torch.device(request.param)
