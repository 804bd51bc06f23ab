"""The CPU packed-attention kernel equals SDPA with the block-diagonal mask, values and grads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oneseek_job.training.attention import DOC_SDPA, register_attention
from tests._tiny import build_model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("attn") / "tiny-llama")


def _load(path: Path, attention: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention)


def test_packed_kernel_matches_masked_sdpa(tiny_llama: Path) -> None:
    register_attention(DOC_SDPA)
    reference, packed = _load(tiny_llama, "sdpa"), _load(tiny_llama, DOC_SDPA)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (2, 48), generator=gen)
    # Row 0: documents of 20, 12 and 16 tokens; row 1: 30 then 18 (a cut document).
    positions = torch.stack(
        [
            torch.cat([torch.arange(20), torch.arange(12), torch.arange(16)]),
            torch.cat([torch.arange(30), torch.arange(18)]),
        ]
    )
    out_ref = reference(input_ids=ids, position_ids=positions, use_cache=False).logits
    out_packed = packed(input_ids=ids, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(out_packed, out_ref, rtol=1e-5, atol=1e-5)
    out_ref.square().mean().backward()
    out_packed.square().mean().backward()
    for (name, p_ref), (_, p_packed) in zip(
        reference.named_parameters(), packed.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p_packed.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_kernel_keeps_documents_apart(tiny_llama: Path) -> None:
    register_attention(DOC_SDPA)
    model = _load(tiny_llama, DOC_SDPA).eval()
    gen = torch.Generator().manual_seed(2)
    doc_a, doc_b = (
        torch.randint(5, 200, (1, 20), generator=gen),
        torch.randint(5, 200, (1, 12), generator=gen),
    )
    positions = torch.cat([torch.arange(20), torch.arange(12)]).unsqueeze(0)
    with torch.no_grad():
        alone = model(input_ids=doc_b, use_cache=False).logits
        packed = model(input_ids=torch.cat([doc_a, doc_b], 1), position_ids=positions).logits
        leaky = model(input_ids=torch.cat([doc_a, doc_b], 1), use_cache=False).logits
    torch.testing.assert_close(packed[:, 20:], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(leaky[:, 20:], alone, atol=1e-3)  # the test can fail
