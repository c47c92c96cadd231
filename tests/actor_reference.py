# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""Shared by the actor-patch tests: PPO batches on the toy model and the hand-computed whole-batch loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from verl import DataProto
from verl.trainer.ppo.core_algos import kl_penalty
from verl.utils.model import compute_position_id_with_mask

from rllm_fully_async import patches

PAD_ID = 3
ENTROPY_COEFF = 0.01
KL_COEF = 0.1
KL_TYPE = "k2"  # unclamped, so its gradient is never zero
REF_LOG_PROB = -5.75  # about the untrained toy model's log-probs (vocabulary 320)


def make_batch(prompt_lens, response_lens, empty_mask_rows=(), seed=0) -> DataProto:
    """Left-padded prompts, right-padded responses, random advantages and behaviour log-probs."""
    gen = torch.Generator().manual_seed(seed)
    n, prompt_width, response_width = len(prompt_lens), max(prompt_lens), max(response_lens)
    prompts = torch.full((n, prompt_width), PAD_ID)
    responses = torch.full((n, response_width), PAD_ID)
    prompt_mask = torch.zeros(n, prompt_width, dtype=torch.long)
    response_mask = torch.zeros(n, response_width, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens, strict=True)):
        prompts[i, prompt_width - p :] = torch.randint(4, 300, (p,), generator=gen)
        prompt_mask[i, prompt_width - p :] = 1
        responses[i, :r] = torch.randint(4, 300, (r,), generator=gen)
        response_mask[i, :r] = 1
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    for i in empty_mask_rows:  # tokens the policy did not produce, e.g. tool output
        response_mask[i] = 0
    old_log_probs = -torch.rand(n, response_width, generator=gen) * 3
    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": compute_position_id_with_mask(attention_mask),
            "response_mask": response_mask,
            "old_log_probs": old_log_probs,
            "rollout_log_probs": old_log_probs - 0.05,
            "ref_log_prob": REF_LOG_PROB + 0.3 * torch.randn(n, response_width, generator=gen),
            "advantages": torch.randn(n, 1, generator=gen).expand(n, response_width).contiguous(),
        },
        meta_info={"temperature": 1.0, "pad_token_id": PAD_ID},
    )


def reference(model, batch: DataProto, entropy_coeff: float = 0.0, kl_coef: float | None = None):
    """Gradients and terms of the whole-batch token-mean PPO loss, from one forward pass over the batch.

    With one mini-batch and one epoch verl treats the batch as on-policy (old log-probs = current,
    detached), so the ratio is 1 and clipping is inactive.
    """
    model.zero_grad()
    b = batch.batch
    mask = b["response_mask"].float()
    tokens = mask.sum()
    width = b["responses"].shape[1]
    logits = model(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        position_ids=b["position_ids"],
        use_cache=False,
    ).logits[:, -width - 1 : -1]
    log_prob = torch.log_softmax(logits, dim=-1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(log_prob - log_prob.detach())
    pg = (-b["advantages"] * ratio * mask).sum() / tokens
    entropy = ((torch.logsumexp(logits, -1) - (F.softmax(logits, -1) * logits).sum(-1)) * mask).sum() / tokens
    loss = pg - entropy_coeff * entropy
    kl = None
    if kl_coef is not None:
        kl = (kl_penalty(log_prob, b["ref_log_prob"], KL_TYPE) * mask).sum() / tokens
        loss = loss + kl_coef * kl
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad()
    terms = {"pg": pg.item(), "entropy": entropy.item(), "kl": None if kl is None else kl.item()}
    return grads, {**terms, "log_prob": log_prob.detach()}


def relative_error(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    diff = torch.cat([(g - r).flatten() for g, r in zip(grads, ref, strict=True)])
    return (diff.norm() / torch.cat([r.flatten() for r in ref]).norm()).item()


# One 60-token response and seven 2-token ones: dynamic batching puts them in micro-batches whose
# token counts differ far more than their sample counts.
SKEWED_PROMPTS = [5, 4, 6, 5, 4, 6, 5, 4]
SKEWED_RESPONSES = [60, 2, 2, 2, 2, 2, 2, 2]


def installed_original(patch: patches.FilePatch) -> str:
    """The unpatched text of ``patch``'s target file, from the installed verl whether it is patched or not."""
    installed = (patches.default_target() / patch.target).read_text(encoding="utf-8")
    if patch.state_of(installed.encode()) == patches.ORIGINAL:
        return installed
    return patch.original_text(installed)
