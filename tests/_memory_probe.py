"""Peak memory of LoRA training micro-steps on CPU vs ``estimate_memory`` (run as a script).

Usage: python tests/_memory_probe.py MODEL_DIR MICRO_BATCH SEQ_LEN CHECKPOINTING DROPOUT
Prints one JSON line: measured bytes above the pre-load RSS (sampled every 2 ms, and the
weights are inside it) and the estimate. Run it with glibc's mmap threshold pinned
(``MALLOC_MMAP_THRESHOLD_``), else RSS measures what malloc keeps after frees, not what
training holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from oneseek_job.config import LoraSettings, TrainSettings
from oneseek_job.data import Blocks, make_batch
from oneseek_job.training.attention import DOC_SDPA, register_attention
from oneseek_job.training.loss import batch_loss, chunk_rows
from oneseek_job.training.memory import estimate_memory
from oneseek_job.training.targets import TARGET_MODULES


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    path, mb, seq = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    checkpointing, dropout = sys.argv[4] == "1", float(sys.argv[5])
    config = AutoConfig.from_pretrained(path)
    targets = TARGET_MODULES[config.model_type]
    train = TrainSettings(
        seq_len=seq,
        micro_batch_size=mb,
        batch_tokens=seq * mb,
        gradient_checkpointing=checkpointing,
    )
    lora = LoraSettings(r=16, alpha=32, dropout=dropout)
    estimate = estimate_memory(
        path,
        config,
        lora,
        train,
        targets,
        dtype_bytes=4,
        loss_chunk_tokens=chunk_rows(config.vocab_size),
    )
    torch.manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (mb, seq))
    half = torch.cat([torch.arange(seq // 2), torch.arange(seq - seq // 2)])
    batch = make_batch(Blocks(ids, ids.roll(-1, 1), half.repeat(mb, 1)), range(mb))

    base = rss()
    model = AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=register_attention(DOC_SDPA)
    )
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=targets)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model.train()
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(2):  # the second step has the optimizer state in memory
        batch_loss(model, batch, contextlib.nullcontext).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    done.set()
    sampler.join()
    print(json.dumps({"measured": max(peak, rss()) - base, "estimate": estimate.total}))


if __name__ == "__main__":
    main()
