#!/usr/bin/env python3
"""Make the small model the server tests run: a random Falcon-H1 checkpoint with a real tokenizer.

    python3 tests/python/make_server_fixture.py [--out tests/fixtures/server/model]

Writes a Hugging Face model directory:
  config.json, generation_config.json, model.safetensors   (transformers' save_pretrained, bf16)
  tokenizer.json, tokenizer_config.json, special_tokens_map.json   (tokenizers + transformers)

The tokenizer is a byte-level BPE trained with the `tokenizers` library on a small built-in
English text (vocab 384 including the special tokens <|endoftext|>, <|im_start|>, <|im_end|>),
with a ChatML chat_template in tokenizer_config.json and eos = <|im_end|>. The model's
vocab_size equals the tokenizer's. Weights are random (moderate scale, the approach of
make_model_fixtures.py), so replies are noise, but every path of the server runs on real text.

Deterministic: fixed seeds. Needs torch, transformers >= 5 (FalconH1), tokenizers.
"""

import argparse
import json
import math
import os
import warnings

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import FalconH1Config, FalconH1ForCausalLM, PreTrainedTokenizerFast  # noqa: E402

VOCAB_SIZE = 384
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = """\
The quick brown fox jumps over the lazy dog. A server answers requests from many clients at once.
Hello! How are you today? I am fine, thank you. What is the weather like in Paris in the spring?
Falcon models are hybrid: attention and a state space mixer run side by side in every layer.
The cache keeps the state of a conversation, so the next turn does not read the whole prompt again.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14. Punctuation: , . ; : ! ? ( ) [ ] { } " ' - _ / \\
Tell me a story about a robot who learns to paint. Once upon a time there was a little robot.
The system prompt says: you are a helpful assistant. The user asks a question and the assistant replies.
Streaming sends each piece of text as soon as it is ready, and the page shows it as it arrives.
"""


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 20, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    return tok


def randomize(model, gen):
    """Moderate-scale random weights (as make_model_fixtures.py), deterministic order."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("embed_tokens.weight"):
                v = torch.randn(shape, generator=gen)
            elif "layernorm" in name or name.endswith("mamba.norm.weight"):
                v = 1.0 + 0.3 * torch.randn(shape, generator=gen)
            elif name.endswith("A_log"):
                v = torch.log(0.5 + 7.5 * torch.rand(shape, generator=gen))
            elif name.endswith("mamba.D"):
                v = torch.randn(shape, generator=gen)
            elif name.endswith("dt_bias"):
                v = -1.0 + torch.randn(shape, generator=gen)
            elif name.endswith("conv1d.weight"):
                v = 0.5 * torch.randn(shape, generator=gen)
            elif name.endswith(".bias"):
                v = 0.1 * torch.randn(shape, generator=gen)
            elif p.ndim == 2:
                v = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(shape)}")
            p.data.copy_(v)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures", "server", "model"))
    out = os.path.abspath(ap.parse_args().out)
    os.makedirs(out, exist_ok=True)

    raw = train_tokenizer()
    ids = {t: raw.token_to_id(t) for t in SPECIALS}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    # The chat template goes into tokenizer_config.json (transformers 5 may write a separate
    # chat_template.jinja instead); keep one place, the one most checkpoints use.
    cfg_path = os.path.join(out, "tokenizer_config.json")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    tcfg["chat_template"] = CHATML
    with open(cfg_path, "w") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
    jinja = os.path.join(out, "chat_template.jinja")
    if os.path.exists(jinja):
        os.remove(jinja)

    torch.manual_seed(0)
    cfg = FalconH1Config(
        vocab_size=VOCAB_SIZE, hidden_size=96, intermediate_size=192, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
        mamba_d_ssm=192, mamba_n_heads=12, mamba_d_head=16, mamba_n_groups=1,
        mamba_d_state=16, mamba_chunk_size=32, mamba_expand=2, mamba_d_conv=4,
        mamba_conv_bias=True, mamba_proj_bias=False, projectors_bias=False,
        attention_bias=False, mlp_bias=False, mamba_rms_norm=False, mamba_norm_before_gate=True,
        tie_word_embeddings=False, hidden_act="silu", lm_head_multiplier=4.0, embedding_multiplier=1.0,
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )
    model = FalconH1ForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(7007)
    randomize(model, gen)
    model.to(torch.bfloat16).save_pretrained(out)

    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"wrote {out}: {sorted(os.listdir(out))}, {total / 1e6:.2f} MB, specials {ids}")


if __name__ == "__main__":
    main()
