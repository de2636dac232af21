"""Tiny random-weight models of every supported family, built in memory in milliseconds.

The tokenizer is a small byte-level BPE trained here on a few sentences; the Llama-style families
get a BOS token prepended (as their real tokenizers do), so BOS handling is exercised.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config, GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM,
    LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast,
    Qwen2Config, Qwen2ForCausalLM,
)

FAMILIES = ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"]
BOS_FAMILIES = {"llama", "mistral"}

TRAIN_TEXT = [
    "The Eiffel Tower is in the city of Paris.", "Miles Davis plays the trumpet.",
    "Danielle Darrieux speaks the language of French.", "Toyota is headquartered in Japan.",
    "The capital of Norvania is Keldport.", "Orla Venn Marquez plays the sport of chess.",
    "Kara Selwyn works for Brightwell Systems.", "The mother tongue of Ada Lovelace is English.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
]


def make_tokenizer(bos: bool = False, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT * 4, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<s>" if bos else "<|endoftext|>",
                                   pad_token="<|endoftext|>")
    return fast


def make_hf_model(family: str, vocab_size: int, n_layer: int = 3, d: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    common_llama = dict(vocab_size=vocab_size, hidden_size=d, intermediate_size=4 * d,
                        num_hidden_layers=n_layer, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=128)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=d, n_layer=n_layer,
                                           n_head=4, n_positions=128))
    elif family == "gptj":
        model = GPTJForCausalLM(GPTJConfig(vocab_size=vocab_size, n_embd=d, n_layer=n_layer, n_head=4,
                                           n_positions=128, rotary_dim=4))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=n_layer,
                                                 num_attention_heads=4, intermediate_size=4 * d,
                                                 max_position_embeddings=128))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common_llama))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**common_llama))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common_llama))
    else:
        raise ValueError(family)
    return model.eval()


def make_tiny_handle(family: str = "gpt2", n_layer: int = 3, d: int = 32, seed: int = 0, device: str = "cpu"):
    from core.model import wrap_model

    tok = make_tokenizer(bos=family in BOS_FAMILIES)
    model = make_hf_model(family, len(tok), n_layer=n_layer, d=d, seed=seed).to(device)
    return wrap_model(model, tok, name=f"tiny-{family}")


def save_tiny_model(path, family: str = "gpt2") -> None:
    """Write a tiny model as a standard HF folder (safetensors + tokenizer)."""
    handle = make_tiny_handle(family)
    handle.hf.save_pretrained(path)
    handle.tokenizer.save_pretrained(path)
