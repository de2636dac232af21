"""A process that records seeded batches into a workspace until it is killed (test_ledger).

Usage: python -m tests.ledger_child WORKSPACE — prints the batch number after each commit.
"""

from __future__ import annotations

import sys

import torch

from core.ledger import Ledger
from tests.ledger_helpers import record_seeded
from tests.tiny import make_tiny_handle


def main(workspace: str) -> None:
    torch.set_num_threads(1)
    handle = make_tiny_handle("gpt2")
    ledger = Ledger(workspace)
    for k in range(10_000):
        record_seeded(ledger, handle, [k % 3, (k + 1) % 3], seed=k)
        print(k, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
