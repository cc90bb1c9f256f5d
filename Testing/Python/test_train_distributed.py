"""DistributedDataParallel through torchrun: two CPU processes (gloo) train the tiny network a few steps."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

from medals.train import parse_config
from medals.train.initial import initial_model
from train_fixtures import tiny_config, write_tiny_tower, write_toy_dataset

RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from medals.train import parse_config, train

    config = parse_config(json.loads(open(sys.argv[1]).read()))
    result = train(config, device="cpu", log=lambda line: None)
    rank = int(os.environ["RANK"])
    torch.save({"nets": {k: v.state_dict() for k, v in result.model.nets.items()},
                "head": result.model.text_encoder.projection_layer.state_dict(),
                "losses": result.logged_losses}, os.path.join(sys.argv[2], f"rank{rank}.pt"))
""")


def test_two_gloo_processes_train_to_identical_weights(tmp_path, parity):
    dataset = write_toy_dataset(tmp_path / "data")
    tower = write_tiny_tower(parity, tmp_path / "tower")
    config = tiny_config(dataset, tower, tmp_path / "out", steps=3, checkpoint_every=3)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "rank.py"), str(tmp_path / "config.json"), str(tmp_path)],
        env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["losses"] == ranks[1]["losses"]  # logged losses are averaged over both processes
    assert len(ranks[0]["losses"]) == 3 and np.all(np.isfinite(ranks[0]["losses"]))
    heads = [rank["head"] for rank in ranks]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    nets = [rank["nets"]["coarse"] for rank in ranks]
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
    # ... and not because nothing moved: the weights left their (seeded) initial values
    initial = initial_model(parse_config(config)).nets["coarse"].state_dict()
    assert not all(torch.equal(initial[k], nets[0][k]) for k in initial)
