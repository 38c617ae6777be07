"""Which training slices each step sees: a pure function of (seed, rank, step).

Every pool is walked in random order, one fresh permutation per pass (so the small labeled set
cycles, each slice once per pass). Because the batch for step ``s`` is computed from ``s`` alone,
resuming needs no sampler state and continues with exactly the batches the uninterrupted run
would have drawn; different ranks draw different permutations.
"""

from __future__ import annotations

import torch


class CyclingSampler:
    def __init__(self, pool_size: int, batch_size: int, seed: int, rank: int = 0, stream: int = 0):
        if pool_size < 1:
            raise ValueError("cannot sample from an empty pool")
        self.pool_size, self.batch_size = pool_size, batch_size
        self.seed, self.rank, self.stream = seed, rank, stream
        self._cache: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        perm = self._cache.get(epoch)
        if perm is None:
            # Distinct, reproducible stream per (seed, stream, rank, epoch).
            key = ((self.seed * 1_000_003 + self.stream) * 10_007 + self.rank) * 1_000_033 + epoch
            gen = torch.Generator().manual_seed(key % (2**63 - 1))
            perm = torch.randperm(self.pool_size, generator=gen)
            # Keep the current and previous pass (a batch may straddle two).
            self._cache = {e: p for e, p in self._cache.items() if e == epoch - 1}
            self._cache[epoch] = perm
        return perm

    def indices(self, step: int) -> torch.Tensor:
        start = step * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.pool_size)
            out.append(int(self._permutation(epoch)[offset]))
        return torch.tensor(out, dtype=torch.long)
