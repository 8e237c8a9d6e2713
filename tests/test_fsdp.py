"""Sharded training, the scale-out users reach first: FSDP2 (``fully_shard``, 2 processes, gloo on
the CPU) with every first-order optimizer follows the iterates of one process on the full batch
(each rank updates its local shard: every update of §8.3–8.5 is elementwise), a NaN in one rank's
shard makes every rank skip the step, and ``torch.distributed.checkpoint`` saves and restores the
sharded optimizer mid-training bit-identically."""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_drop_in import ALL
from torch import nn

FIRST, SECOND = 3, 3


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def _train(model, opt, steps: range, shard: slice = slice(None), nan_at: int | None = None) -> None:
    for k in steps:
        gen = torch.Generator().manual_seed(k)
        x, y = torch.randn(16, 5, generator=gen), torch.randn(16, 3, generator=gen)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[shard]), y[shard]).backward()
        if k == nan_at:  # one element of the first weight's gradient: in rank 0's shard only
            grad = model[0].weight.grad
            (grad.to_local() if hasattr(grad, "to_local") else grad)[0, 0] = float("nan")
        opt.step()


def _sharded(seed: int = 0):
    from torch.distributed.fsdp import fully_shard

    model = _model(seed)
    fully_shard(model[0])
    fully_shard(model)
    return model


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # DCP's and FSDP's own notes on a CPU process group
    half = slice(rank * 8, rank * 8 + 8)
    try:
        for name, make in ALL.items():
            model = _sharded()
            opt = make(model.parameters())
            _train(model, opt, range(FIRST), half, nan_at=1 if rank == 0 else None)
            msd, osd = get_state_dict(model, opt)
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=os.path.join(out, f"{name}.dcp"))
            _train(model, opt, range(FIRST, FIRST + SECOND), half)
            straight = [p.full_tensor() for p in model.parameters()]

            model = _sharded(seed=1)  # other weights: the restore must matter
            opt = make(model.parameters())
            msd, osd = get_state_dict(model, opt)
            loaded = {"model": msd, "optim": osd}
            dcp.load(loaded, checkpoint_id=os.path.join(out, f"{name}.dcp"))
            set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
            _train(model, opt, range(FIRST, FIRST + SECOND), half)
            resumed = [p.full_tensor() for p in model.parameters()]
            if rank == 0:
                torch.save({"straight": straight, "resumed": resumed}, os.path.join(out, f"{name}.pt"))
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see test_ddp.py: gloo's destructors may abort at exit after the results are saved


@pytest.mark.slow
def test_fsdp2_every_first_order_optimizer_matches_one_process_and_resumes_from_dcp(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for name, make in ALL.items():
        model = _model()
        opt = make(model.parameters())
        _train(model, opt, range(FIRST + SECOND), nan_at=1)
        got = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        for a, b in zip(got["straight"], got["resumed"]):
            assert torch.equal(a, b), f"{name}: the DCP restore does not continue bit-identically"
        for a, w in zip(got["straight"], model.parameters()):
            torch.testing.assert_close(a, w.detach(), rtol=1e-5, atol=1e-6, msg=name)
        assert opt.skipped_steps == 1, name  # one process skipped the poisoned step: both ranks did
