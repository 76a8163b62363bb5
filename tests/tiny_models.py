"""Tiny offline backbones and dataset folders for tests (no download, built in a second).

``build_tiny_reward_model(folder)`` saves a random 2-layer ``LlamaForSequenceClassification``
(hidden 32, one reward output) with a word-level tokenizer that carries a chat template;
``load_backbone(folder, dtype="fp32")`` loads it like any Hugging Face reward model.
``write_dataset(folder, conversations)`` writes a dataset folder's ``texts.parquet`` following
``lore_rm.data.layout``.

Run as a script (``python tests/tiny_models.py FOLDER``) to build the model from a shell.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

WORDS = (
    "the a an and or but if then so because what why how when where who which is are was "
    "were be been have has had do does did can could will would should may might must not no "
    "yes good bad great poor helpful harmful safe unsafe answer question please thanks sorry "
    "i you he she it we they me him her us them my your his its our their this that these "
    "those here there now today tomorrow cat dog tree river city car book music food water "
    "sun moon star time day night year friend help tell explain write short long story poem "
    "code math number one two three four five big small fast slow happy sad"
).split()
SPECIAL = ["[PAD]", "[UNK]", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
)


def build_tokenizer(padding_side: str = "right"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + list(WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="[PAD]",
        unk_token="[UNK]",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        padding_side=padding_side,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_bpe_tokenizer(padding_side: str = "right"):
    """A byte-level BPE tokenizer (Llama 3 / GPT-2 style) trained on ``WORDS``, with the same
    special tokens and chat template as :func:`build_tokenizer`. The running ``tokenizers``
    saves its merges in the format it writes (pairs since 0.20), which is what an export
    copies."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="[PAD]",
        unk_token="[UNK]",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        padding_side=padding_side,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama_config(tok, hidden_size: int = 32, num_hidden_layers: int = 2, **kw):
    """A small ``LlamaConfig`` over tokenizer ``tok`` (2 heads of keys and values)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **kw,
    )


def build_tiny_reward_model(
    folder: str | Path,
    seed: int = 0,
    *,
    rope_theta: float = 10000.0,
    rope_scaling: dict | None = None,
    tokenizer: str = "word",
    **save_kwargs,
) -> Path:
    """Save a random tiny Llama reward model + tokenizer into ``folder``; return it.

    ``rope_scaling``: e.g. ``{"rope_type": "llama3", ...}``; ``tokenizer``: ``"word"``
    (word-level) or ``"bpe"`` (byte-level BPE); ``save_kwargs`` go to the model's
    ``save_pretrained`` (``max_shard_size``, ``safe_serialization``)."""
    import torch
    from transformers import LlamaForSequenceClassification

    folder = Path(folder)
    tok = build_bpe_tokenizer() if tokenizer == "bpe" else build_tokenizer()
    config = tiny_llama_config(
        tok,
        max_position_embeddings=512,
        num_labels=1,
        rope_theta=rope_theta,
        rope_scaling=dict(rope_scaling) if rope_scaling else None,  # 5.x adds to it
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a visible reward direction, not an almost-zero init
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(folder, **save_kwargs)
    tok.save_pretrained(folder)
    return folder


def random_conversations(n: int, seed: int = 0, max_words: int = 30) -> list[list[dict]]:
    """``n`` conversations of varied lengths (some with a system turn, some multi-turn)."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    out = []
    for i in range(n):
        conv = []
        if i % 5 == 0:
            conv.append({"role": "system", "content": words(rng.randint(1, 5))})
        for _ in range(1 + (i % 3 == 0)):
            conv.append({"role": "user", "content": words(rng.randint(1, max_words))})
            conv.append({"role": "assistant", "content": words(rng.randint(1, max_words))})
        out.append(conv)
    return out


def write_dataset(folder: str | Path, conversations: list[list[dict]]) -> Path:
    """A dataset folder with only ``texts.parquet`` (row i = conversation i)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "text_id": pa.array(range(len(conversations)), pa.int64()),
            "prompt_id": pa.array([f"p{i}" for i in range(len(conversations))]),
            "messages": pa.array([json.dumps(c) for c in conversations]),
        }
    )
    pq.write_table(table, folder / "texts.parquet")
    return folder


if __name__ == "__main__":
    print(build_tiny_reward_model(sys.argv[1]))
