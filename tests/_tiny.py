"""Tiny random-weight causal LMs with a locally trained tokenizer, for the training tests.

Uses ``oneseek_job.demo.build_tiny_model`` when the demo module provides it, so the tests
train the same checkpoints the demo ships; otherwise builds an equivalent one here.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Riksdagen stiftar lagar och beslutar om statens budget.",
    "Regeringen styr riket och ansvarar inför riksdagen.",
    "Kommunerna ansvarar för skola, äldreomsorg och socialtjänst.",
    "Regionerna ansvarar främst för hälso- och sjukvården.",
    "Val till riksdagen hålls vart fjärde år i september.",
    "Allemansrätten ger alla rätt att vistas i naturen.",
    "Offentlighetsprincipen ger insyn i myndigheternas arbete.",
    "Question: Answer: What who how när var varför hur vem",
]


def build_model(target: Path, *, architecture: str = "llama", seed: int = 0) -> Path:
    try:
        from oneseek_job import demo  # type: ignore[attr-defined]

        build = demo.build_tiny_model
    except (ImportError, AttributeError):
        build = None
    if build is not None:
        return Path(build(target, architecture=architecture, display_name=target.name, seed=seed))
    return _build_local(target, architecture=architecture, seed=seed)


def _build_local(target: Path, *, architecture: str, seed: int) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

    target.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.save_pretrained(target)
    common = dict(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    config = Qwen2Config(**common) if architecture == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(target, safe_serialization=True)
    return target
