"""Make a tiny random-weight Llama (and a tokenizer trained on a few lines) that vLLM can serve.

Nothing is downloaded: the tokenizer is trained here with `tokenizers`, the weights are random
(`transformers`' LlamaForCausalLM from a LlamaConfig, seeded), and a chat template is attached.
The answers are gibberish, which is all a throughput / integration check needs.

    python bench/make_tiny_model.py /tmp/tiny-llama        # needs torch, transformers, tokenizers

Run it with the Python of the environment that has vLLM (not msgbatch's own): see the README's
"Backends" section for the whole recipe.
"""

from __future__ import annotations

import sys
from pathlib import Path

TEXT = """\
The quick brown fox jumps over the lazy dog.
A batch of requests runs on a backend, one message at a time or many at once.
What is the capital of France? Paris is the capital of France.
Hello, world! How are you today? I am fine, thank you.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.
Tools, messages, systems, users and assistants talk in turns.
"""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | map(attribute='text') | select('string') | join('\\n') %}{% endif %}"
    "<|{{ message['role'] }}|>{{ text }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def main(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TEXT.splitlines() * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=specials[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    fast.save_pretrained(out)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 32: vLLM's CPU attention wants at least that
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id
    ).save_pretrained(out)
    print(f"tiny llama written to {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/msgbatch-tiny-llama"))
