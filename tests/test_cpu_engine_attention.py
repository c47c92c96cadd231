# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""The CPU engine's own masks and grouped-query attention give every row of a padded, streaming batch the
log-probs that transformers' stock SDPA path gives the row alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rllm_fully_async.cpu_engine.attention import ATTN_IMPLEMENTATION, decode_mask, prefill_mask
from rllm_fully_async.cpu_engine.scheduler import BatchEngine, GenerationRequest, SamplingOptions


def test_prefill_mask_is_causal_masks_padding_and_lets_padding_queries_see_themselves() -> None:
    mask = prefill_mask(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    assert mask[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert decode_mask(torch.tensor([[0, 1], [1, 1]])).tolist() == [[[[False, True]]], [[[True, True]]]]


@pytest.fixture(scope="module")
def models(toy_model_dir: Path):
    stock = AutoModelForCausalLM.from_pretrained(toy_model_dir, attn_implementation="sdpa").eval()
    ours = AutoModelForCausalLM.from_pretrained(toy_model_dir, attn_implementation=ATTN_IMPLEMENTATION).eval()
    assert ours.config.num_key_value_heads < ours.config.num_attention_heads  # grouped-query heads
    return stock, ours, AutoTokenizer.from_pretrained(toy_model_dir)


def alone_logprobs(model, prompt: list[int], output: list[int]) -> list[float]:
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + output])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return logprobs.gather(1, torch.tensor(output)[:, None]).squeeze(1).tolist()


def test_a_streaming_batch_gives_each_row_its_own_logprobs(models) -> None:
    """Rows of different prompt lengths join a running batch at different steps (so the batch is left-padded
    and every decode pass carries padding), sampled at temperature 1; each row's log-probs must equal the
    stock attention's on that row alone."""
    stock, ours, tokenizer = models
    engine = BatchEngine(ours, tokenizer, {tokenizer.eos_token_id}, tokenizer.pad_token_id)
    prompts = [
        [1, 40, 41, 42, 43, 44, 45],
        [1, 60, 9, 77],
        [1, 100, 101, 102, 103, 104, 105, 106, 107, 108],
        [1, 5],
    ]
    requests = [
        GenerationRequest(
            rid=str(i),
            input_ids=prompt,
            sampling=SamplingOptions(max_new_tokens=12 + 3 * i, ignore_eos=True, temperature=1.0),
            return_logprob=True,
            generator=torch.Generator().manual_seed(i),
        )
        for i, prompt in enumerate(prompts)
    ]
    finished: list[GenerationRequest] = []
    for step in range(200):
        admitted = [requests[step // 3]] if step % 3 == 0 and step // 3 < len(requests) else []
        finished += engine.step(admitted, set(), decode=True)
        if len(finished) == len(requests):
            break
    assert sorted(r.rid for r in finished) == ["0", "1", "2", "3"]
    assert engine.counters.max_running_batch == len(requests)
    for req in requests:
        assert len(req.output_ids) == req.sampling.max_new_tokens
        expected = alone_logprobs(stock, req.input_ids, req.output_ids)
        assert req.output_logprobs == pytest.approx(expected, abs=2e-5), req.rid
