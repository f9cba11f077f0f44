"""Shared test settings for this folder."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    # These tests use tiny tensors: intra-op threads only add synchronisation, and on a shared 2-core
    # machine a busy sibling process can stall a 2-thread op for milliseconds. Restored afterwards, so
    # other folders' tests keep their own setting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
