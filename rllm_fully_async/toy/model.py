# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""An offline tiny model: a byte-level BPE tokenizer and a randomly initialised Qwen2 causal LM.

Tests, the CPU engine and the CPU demo need a real Hugging Face checkpoint without any network.
``python -m rllm_fully_async.toy build --out DIR`` writes one that ``AutoTokenizer`` and
``AutoModelForCausalLM.from_pretrained(DIR)`` load. The same seed gives byte-identical weights.
"""

from __future__ import annotations

import argparse
import json
import os
import string
from pathlib import Path

IM_START, IM_END, ENDOFTEXT, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<pad>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, PAD]
# Single tokens for the tool-call tags, added as Qwen2.5's tokenizer has them: not special, so decoded
# text keeps them (the tool-use task's model only).
TOOL_CALL_TOKENS = ["<tool_call>", "</tool_call>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_MODEL_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
# A wider initialisation than Qwen2's 0.02 makes the untrained policy less uniform over the vocabulary;
# measured on the toy task, RL from scratch then reaches high reward in far fewer steps.
INITIALIZER_RANGE = 0.2


def _training_corpus() -> list[str]:
    """Chat-formatted arithmetic and plain ASCII text, so that common merges exist."""
    lines = [string.printable]
    for a in range(10):
        for b in range(10):
            lines.append(f"{IM_START}user\nWhat is {a}+{b}? Answer with one digit.{IM_END}\n")
            lines.append(f"{IM_START}assistant\n{(a + b) % 10}{IM_END}\n")
    lines += ["system", "user", "assistant", "Answer the question.", "The answer is"]
    return lines


def build_tokenizer(vocab_size: int = 320, tool_tokens: bool = False):
    """A byte-level BPE tokenizer with a ChatML template; EOS is ``<|im_end|>``.

    ``tool_tokens`` adds ``<tool_call>`` and ``</tool_call>`` as single (non-special) tokens.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_training_corpus(), trainer=trainer)
    if tool_tokens:
        core.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_CALL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[ENDOFTEXT, IM_START],
        model_max_length=DEFAULT_MODEL_SHAPE["max_position_embeddings"],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_model(tokenizer, seed: int = 0, **shape: int):
    """A randomly initialised ``Qwen2ForCausalLM`` sized for ``tokenizer``; deterministic per seed."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    dims = {**DEFAULT_MODEL_SHAPE, **shape}
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        rope_theta=10000.0,
        initializer_range=INITIALIZER_RANGE,
        torch_dtype="float32",
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dims,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def build(out: str | os.PathLike, seed: int = 0, tool_tokens: bool = False, **shape: int) -> Path:
    """Write tokenizer + model to ``out`` (created if needed) and return the path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(tool_tokens=tool_tokens)
    model = build_model(tokenizer, seed=seed, **shape)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    marker = {"seed": seed, "tool_tokens": tool_tokens, **DEFAULT_MODEL_SHAPE, **shape}
    (out / "toy_model.json").write_text(json.dumps(marker) + "\n")
    return out


def ensure_built(out: str | os.PathLike, seed: int = 0, tool_tokens: bool = False) -> Path:
    """Build the toy model at ``out`` unless a complete one with these settings is already there."""
    out = Path(out)
    marker = out / "toy_model.json"
    if marker.exists() and (out / "model.safetensors").exists():
        built = json.loads(marker.read_text())
        if built.get("seed") == seed and built.get("tool_tokens", False) == tool_tokens:
            return out
    return build(out, seed=seed, tool_tokens=tool_tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rllm_fully_async.toy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the tiny tokenizer + model to --out")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    args = parser.parse_args(argv)
    path = build(args.out, seed=args.seed)
    print(f"toy model written to {path}")
