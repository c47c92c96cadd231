# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""One rank of a two-rank FSDP2 (gloo) run of a ``dp_actor.py`` build: compute_log_prob, then update_policy.

Run as a script, one process per rank; ``tests/test_dp_actor_patch.py`` starts both and bounds the
wait. Each rank takes its half of a saved batch, shards the toy model with verl's own ``apply_fsdp2``
and runs the real ``DataParallelPPOActor``. Rank 0 writes the full gradient of the optimizer step
(gathered from the shards), every rank its log-probs and metrics.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dp-actor", type=Path, required=True, help="the dp_actor.py to run")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch", type=Path, required=True, help="torch.save'd dict of the whole batch")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--collective-timeout", type=float, default=60.0)
    parser.add_argument("overrides", nargs="*", help="actor config overrides, key=value")
    args = parser.parse_args()

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=args.rank,
        world_size=args.world_size,
        timeout=datetime.timedelta(seconds=args.collective_timeout),
    )
    from hydra import compose, initialize_config_module
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoModelForCausalLM
    from verl import DataProto
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.fsdp_utils import apply_fsdp2

    spec = importlib.util.spec_from_file_location("two_rank_dp_actor", args.dp_actor)
    dp_actor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dp_actor)

    model = AutoModelForCausalLM.from_pretrained(
        args.model, torch_dtype=torch.float32, attn_implementation="sdpa"
    )
    mesh = init_device_mesh("cpu", (args.world_size,), mesh_dim_names=("fsdp",))
    apply_fsdp2(model, {"mesh": mesh, "reshard_after_forward": True}, {})

    with initialize_config_module("verl.trainer.config", version_base=None):
        config = compose(
            "ppo_trainer",
            overrides=[
                "actor_rollout_ref.rollout.n=1",
                "actor_rollout_ref.model.use_remove_padding=false",
                "actor_rollout_ref.actor.strategy=fsdp2",
                "actor_rollout_ref.actor.fsdp_config.dtype=float32",
                "actor_rollout_ref.actor.use_torch_compile=false",
                "actor_rollout_ref.actor.grad_clip=1e9",
                *(f"actor_rollout_ref.actor.{o}" for o in args.overrides),
            ],
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    grads: list[list[torch.Tensor]] = []
    optimizer.register_step_pre_hook(
        lambda opt, a, kw: grads.append([p.grad.full_tensor().detach().clone() for p in model.parameters()])
    )
    actor = dp_actor.DataParallelPPOActor(
        omega_conf_to_dataclass(config.actor_rollout_ref.actor), model, optimizer
    )

    whole = torch.load(args.batch, weights_only=True)
    half = len(whole["tensors"]["input_ids"]) // args.world_size
    mine = {k: v[args.rank * half : (args.rank + 1) * half] for k, v in whole["tensors"].items()}
    batch = DataProto.from_dict(tensors=mine, meta_info=dict(whole["meta_info"]))

    log_probs = actor.compute_log_prob(batch)["log_probs"]
    metrics = actor.update_policy(batch)
    result = {"log_probs": log_probs, "metrics": metrics, "steps": len(grads)}
    if args.rank == 0:
        result["grads"] = grads
    torch.save(result, args.out / f"rank{args.rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
