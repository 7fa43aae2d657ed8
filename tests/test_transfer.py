"""renderers/transfer.py: the values arrive unchanged; on CPU it is a plain copy."""

import pytest
import torch

from renderers.transfer import to_device


def test_cpu_targets_are_plain_and_dtype_converts():
    x = torch.arange(6, dtype=torch.float64).view(2, 3)
    y = to_device(x, "cpu", torch.float32)
    assert y.dtype == torch.float32 and torch.equal(y, x.float())
    assert to_device(x, "cpu") is x


@pytest.mark.gpu
def test_cuda_copies_do_not_wait_for_the_queue():
    """With a long kernel queued, a copy that synced would return only after it finished (the stream
    would be idle); a queued copy returns while the GPU is still busy."""
    x = torch.randn(1000, 4)
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU cycles
    y = to_device(x, "cuda")
    busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    torch.testing.assert_close(y.cpu(), x)
    assert busy, "to_device waited for the GPU queue"
