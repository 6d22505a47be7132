"""Growth under DistributedDataParallel with real processes (gloo on CPU): grow, re-wrap, train in sync.

DDP registers gradient hooks on the parameters that exist at wrap time, so after growth the model is
wrapped again (DDP broadcasts rank 0's parameters at construction, so new dendrites agree across ranks).
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import pai_fast


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different init and data per rank: DDP must make them agree
    model = torch.nn.Sequential(
        pai_fast.DendriticLinear(8, 8, dendrites=1), torch.nn.Tanh(), pai_fast.DendriticLinear(8, 2)
    )
    ddp = DDP(model)
    for _ in range(3):
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        for _ in range(3):
            opt.zero_grad()
            ddp(torch.randn(16, 8)).square().mean().backward()
            opt.step()
        for m in model.modules():
            if isinstance(m, pai_fast.nn.DendriteMixin):
                m.add_dendrite()  # different random draws per rank ...
        ddp = DDP(model)  # ... re-wrapping broadcasts rank 0's values
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    torch.save(
        {
            "gathered": gathered,
            "dendrites": [m.num_dendrites for m in model.modules() if isinstance(m, pai_fast.nn.DendriteMixin)],
        },
        os.path.join(result_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_ddp_growth_keeps_ranks_in_sync(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r = torch.load(tmp_path / "rank0.pt")
    assert r["dendrites"] == [4, 3]
    a, b = r["gathered"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
