"""Every per-document kernel equals the masked reference, in values and gradients, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oneseek_job.training.attention import DOC_SDPA, FLEX, VARLEN, register_attention
from tests._tiny import build_model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("attn") / "tiny-llama")


def _load(path: Path, attention: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention)


def _packed_batch(ids: torch.Tensor, positions: torch.Tensor) -> dict[str, object]:
    """The kwargs make_batch would give for one row (cu_seqlens, document ids)."""
    from oneseek_job.data import Blocks, make_batch

    blocks = Blocks(ids, torch.zeros_like(ids), positions)
    return make_batch(blocks, range(len(blocks))).model_inputs()


def _grad_unless_cpu_flex(kernel: str):  # type: ignore[no-untyped-def]
    import contextlib

    return torch.no_grad() if kernel == FLEX else contextlib.nullcontext()


@pytest.mark.parametrize("kernel", [DOC_SDPA, FLEX])
def test_packed_kernel_matches_masked_sdpa(tiny_llama: Path, kernel: str) -> None:
    register_attention(kernel)
    reference, packed = _load(tiny_llama, "sdpa"), _load(tiny_llama, kernel)
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
    # The kernels see the micro-batch as make_batch lays it out: one row of documents.
    flat = _packed_batch(ids, positions)
    with _grad_unless_cpu_flex(kernel):
        out_packed = packed(**flat).logits.view_as(out_ref)
    torch.testing.assert_close(out_packed, out_ref, rtol=1e-5, atol=1e-5)
    if kernel == FLEX:
        return  # torch 2.13 has no flex backward on CPU: gradients under -m gpu
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


def _tiny_gemma2(path: Path) -> Path:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
        attn_logit_softcapping=0.05, final_logit_softcapping=30.0, query_pre_attn_scalar=16,
    )  # fmt: skip
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("kernel", [DOC_SDPA, FLEX])
def test_gemma2_sliding_window_and_softcap_equal_the_eager_reference(
    tmp_path: Path, kernel: str
) -> None:
    """Each packed document equals the model's own eager attention run on it alone."""
    path = _tiny_gemma2(tmp_path / "gemma2")
    register_attention(kernel)
    reference, packed = _load(path, "eager"), _load(path, kernel)
    assert reference.config.sliding_window == 8 and reference.config.attn_logit_softcapping
    gen = torch.Generator().manual_seed(3)
    lengths = [21, 5, 14]  # longer and shorter than the window
    docs = [torch.randint(3, 256, (1, n), generator=gen) for n in lengths]
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    with _grad_unless_cpu_flex(kernel):
        out = packed(**_packed_batch(torch.cat(docs, 1), positions)).logits
    alone = [reference(input_ids=d, use_cache=False).logits for d in docs]
    torch.testing.assert_close(out, torch.cat(alone, 1), rtol=1e-5, atol=1e-5)
    if kernel == DOC_SDPA:
        out.square().mean().backward()
        (torch.cat(alone, 1).square().mean()).backward()
        for (name, p_ref), (_, p_packed) in zip(
            reference.named_parameters(), packed.named_parameters(), strict=True
        ):
            torch.testing.assert_close(p_packed.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
    # The window matters here: without it the model computes something else.
    from transformers import AutoModelForCausalLM

    unwindowed = AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", sliding_window=4096
    )
    with torch.no_grad():
        assert not torch.allclose(unwindowed(input_ids=docs[0]).logits, alone[0], atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
@pytest.mark.parametrize("kernel", [DOC_SDPA, FLEX, VARLEN])
def test_cuda_kernels_match_the_reference_in_values_and_gradients(
    tiny_llama: Path, tmp_path: Path, arch: str, kernel: str
) -> None:
    """bf16 on the GPU: varlen (flash), compiled flex and per-document SDPA vs eager."""
    path = tiny_llama if arch == "llama" else _tiny_gemma2(tmp_path / "gemma2")
    register_attention(kernel)

    def load(attention: str) -> torch.nn.Module:
        return _load(path, attention).to("cuda", torch.bfloat16)

    reference, packed = load("eager"), load(kernel)
    gen = torch.Generator().manual_seed(4)
    lengths = [100, 37, 120, 255]
    docs = [torch.randint(3, 200, (1, n), generator=gen).cuda() for n in lengths]
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    flat = _packed_batch(torch.cat(docs, 1).cpu(), positions)
    flat = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in flat.items()}
    out = packed(**flat).logits.float()
    alone = torch.cat([reference(input_ids=d, use_cache=False).logits for d in docs], 1).float()
    assert (out - alone).abs().max() < 0.05 * alone.abs().max()
    out.square().mean().backward()
    alone.square().mean().backward()
    for (name, p_ref), (_, p_packed) in zip(
        reference.named_parameters(), packed.named_parameters(), strict=True
    ):
        error = (p_packed.grad.float() - p_ref.grad.float()).norm()
        assert error <= 0.05 * p_ref.grad.float().norm() + 1e-6, name
