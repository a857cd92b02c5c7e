import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, restored afterwards. Tiny tensors: thread hand-offs cost more
    than the maths, badly so on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
