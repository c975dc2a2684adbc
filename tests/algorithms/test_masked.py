import math
import time

import pytest
import torch

from alignloop.algorithms.masked import last_index, masked_mean, masked_sum, masked_var, masked_whiten, zero_padded

pytestmark = pytest.mark.numerics  # float results against hand values and naive loops

X = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -7.0, 8.0]])
M = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_hand_values():
    # real entries: 1, 2, 3, 4, 5 -> sum 15, mean 3
    assert masked_sum(X, M).item() == 15.0
    assert masked_mean(X, M).item() == 3.0
    # per row: (1+2+3)/3 = 2, (4+5)/2 = 4.5
    assert torch.equal(masked_mean(X, M, dim=1), torch.tensor([2.0, 4.5]))
    assert torch.equal(masked_sum(X, M, dim=1), torch.tensor([6.0, 9.0]))
    # squared deviations from 3: 4, 1, 0, 1, 4 -> 10; biased 10/5 = 2, unbiased 10/4 = 2.5
    assert masked_var(X, M, unbiased=False).item() == 2.0
    assert masked_var(X, M).item() == 2.5


def test_padded_entries_are_never_read():
    x = X.clone()
    x[0, 3], x[1, 2], x[1, 3] = float("nan"), float("inf"), -float("inf")
    assert masked_mean(x, M).item() == 3.0
    assert masked_var(x, M).item() == 2.5
    assert torch.isfinite(masked_whiten(x, M)).all()


def test_bool_and_float_masks_agree():
    for m in (M.bool(), M.float()):
        assert masked_mean(X, m).item() == 3.0


def test_degenerate_masks():
    empty = torch.zeros_like(M)
    assert masked_mean(X, empty).item() == 0.0
    assert torch.equal(masked_mean(X, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]), dim=1), torch.tensor([1.0, 0.0]))
    one = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]])
    assert masked_var(X, one).item() == 0.0  # n = 1: no Bessel correction possible
    assert masked_var(X, empty, unbiased=False).item() == 0.0


def test_whiten_mean_zero_var_one_on_real_entries_only():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 9, generator=g) * 3 + 5
    mask = (torch.arange(9) < torch.randint(1, 10, (6, 1), generator=g)).int()
    x_pad = torch.where(mask.bool(), x, torch.full_like(x, 1e6))  # padding must not matter
    w = masked_whiten(x_pad, mask)
    assert abs(masked_mean(w, mask).item()) < 1e-5
    assert abs(masked_var(w, mask).item() - 1.0) < 1e-4
    assert (w[mask == 0] == 0).all()
    real = x[mask.bool()]
    assert torch.allclose(w[mask.bool()], (real - real.mean()) / real.std(), atol=1e-5)


def test_whiten_shift_mean_false_keeps_the_mean():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 7, generator=g) * 2 + 3
    mask = torch.ones(4, 7, dtype=torch.int)
    mask[0, 5:] = 0
    w = masked_whiten(x, mask, shift_mean=False)
    assert math.isclose(masked_mean(w, mask).item(), masked_mean(x, mask).item(), rel_tol=1e-5)
    assert abs(masked_var(w, mask).item() - 1.0) < 1e-4


def test_last_index():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0]])
    assert last_index(mask).tolist() == [2, 0, -1, 3, 2]


def test_zero_padded():
    assert torch.equal(zero_padded(X, M), torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]]))


def test_gradient_flows_to_real_entries_only():
    x = X.clone().requires_grad_(True)
    masked_mean(x, M).backward()
    # d mean / d x_i = 1/5 on the 5 real entries, 0 elsewhere
    assert torch.allclose(x.grad, M.float() / 5)


def _whiten_my_half(rank: int, world: int, init_file: str, x: torch.Tensor, mask: torch.Tensor, out: str) -> None:
    """One of `world` gloo processes: whiten rows rank::world with statistics summed over all."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)

    def all_reduce(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    try:
        mine = slice(rank, None, world)
        torch.save({"adv": masked_whiten(x[mine], mask[mine], all_reduce=all_reduce),
                    "rewards": masked_whiten(x[mine], mask[mine], shift_mean=False, all_reduce=all_reduce)},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_whiten_over_two_processes_equals_one(tmp_path):
    """Two gloo processes, each whitening half the rows with all-reduced statistics, give what
    one process gives on the whole batch (float64: the sums differ only in rounding order)."""
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64) * 3 + 5
    mask = (torch.arange(9) < torch.tensor([9, 1, 4, 0, 7, 3])[:, None]).to(torch.float64)  # uneven halves
    procs = mp.start_processes(_whiten_my_half, args=(2, str(tmp_path / "init"), x, mask, str(tmp_path / "out")),
                               nprocs=2, join=False, start_method="fork")  # fork: no second import of torch
    deadline = time.monotonic() + 120
    while not procs.join(timeout=5):  # False until every process has ended (it raises if one failed)
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("the two processes did not finish in 120 s")
    parts = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    for key, shift in (("adv", True), ("rewards", False)):
        together = torch.empty_like(x)
        together[0::2], together[1::2] = parts[0][key], parts[1][key]
        assert torch.allclose(together, masked_whiten(x, mask, shift_mean=shift), rtol=1e-12, atol=1e-12), key
    # each half on its own would NOT be whitened like the batch: the test can fail
    assert not torch.allclose(torch.cat([masked_whiten(x[0::2], mask[0::2]), masked_whiten(x[1::2], mask[1::2])]),
                              torch.cat([masked_whiten(x, mask)[0::2], masked_whiten(x, mask)[1::2]]), atol=1e-3)
