"""Dataset reading, validation, packing and the deterministic split (oneseek_job.data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from oneseek_job.data import (
    IGNORE_INDEX,
    MAX_RECORD_BYTES,
    Record,
    dataset_files,
    format_prompt,
    load_records,
    prepare_data,
    split_records,
)
from oneseek_job.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))
import _tiny


def write_jsonl(path: Path, rows: list[object]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    model = _tiny.build_model(tmp_path_factory.mktemp("tok") / "tiny-llama")
    return AutoTokenizer.from_pretrained(model, local_files_only=True)


def test_three_record_shapes(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"instruction": "Vad gör riksdagen?", "input": "Kort.", "output": "Stiftar lagar."},
            {"question": "Vem styr?", "response": "Regeringen."},
            {"text": "Allemansrätten gäller alla."},
            {
                "messages": [
                    {"role": "user", "content": "Hej?"},
                    {"role": "assistant", "content": "Hej!"},
                ]
            },
        ],
    )
    records = load_records(path)
    assert [r.line for r in records] == [1, 2, 3, 4]
    assert records[0].prompt == "Question: Vad gör riksdagen?\nKort.\nAnswer:"
    assert (
        records[0].prompt + records[0].answer
        == "Question: Vad gör riksdagen?\nKort.\nAnswer: Stiftar lagar."
    )
    assert records[1].prompt == format_prompt("Vem styr?")
    assert records[2] == Record("", "Allemansrätten gäller alla.", 3, str(path))
    assert records[3].messages == (("user", "Hej?"), ("assistant", "Hej!"))


def test_bad_records_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps({"instruction": "q", "output": "a"})
    path.write_bytes(
        b"\n".join(
            [
                good.encode(),
                b"{not json",
                json.dumps({"instruction": "q"}).encode(),
                b"",
                "\xff\xfe".encode("latin-1"),
                json.dumps([1, 2]).encode(),
                good.encode(),
            ]
        )
        + b"\n"
    )
    with pytest.raises(InputError) as info:
        load_records(path)
    message = str(info.value)
    assert "4 bad dataset record(s)" in message
    for line in (2, 3, 5, 6):
        assert f"{path}:{line}:" in message
    assert f"{path}:1:" not in message and f"{path}:7:" not in message
    assert "\n" not in message

    kept = load_records(path, skip_bad_records=True)
    assert [r.line for r in kept] == [1, 7]


def test_huge_record_is_bad(tmp_path: Path) -> None:
    huge = json.dumps({"text": "x" * (MAX_RECORD_BYTES + 10)})
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, huge])
    with pytest.raises(InputError, match=r"d\.jsonl:2: record larger"):
        load_records(path)


def test_many_bad_records_are_counted_not_all_listed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ["{"] * 12)
    with pytest.raises(InputError, match=r"12 bad dataset record\(s\).*and 7 more"):
        load_records(path)


def test_empty_and_missing_datasets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="no usable records"):
        load_records(empty)
    with pytest.raises(InputError, match="does not exist"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match=r"without \*\.jsonl"):
        load_records(tmp_path / "dir")
    only_bad = write_jsonl(tmp_path / "bad.jsonl", ["{"])
    with pytest.raises(InputError, match="no usable records"):
        load_records(only_bad, skip_bad_records=True)


def test_directory_files_are_read_in_sorted_order(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "b.jsonl", [{"text": "B"}])
    write_jsonl(tmp_path / "a.jsonl", [{"text": "A"}])
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in dataset_files(tmp_path)] == ["a.jsonl", "b.jsonl"]
    assert [r.answer for r in load_records(tmp_path)] == ["A", "B"]


def test_split_is_deterministic_and_order_independent() -> None:
    records = [Record("", f"text {i}", i, "x") for i in range(50)]
    train, val = split_records(records, val_fraction=0.2, seed=7)
    assert len(val) == 10 and len(train) == 40
    _, val_reversed = split_records(list(reversed(records)), val_fraction=0.2, seed=7)
    assert {r.answer for r in val} == {r.answer for r in val_reversed}
    _, val_other_seed = split_records(records, val_fraction=0.2, seed=8)
    assert {r.answer for r in val} != {r.answer for r in val_other_seed}
    tiny_train, tiny_val = split_records(records[:2], val_fraction=0.1, seed=0)
    assert len(tiny_train) == 1 and len(tiny_val) == 1


def test_packing_keeps_documents_apart(tokenizer) -> None:
    records = [
        Record(format_prompt(f"Fråga nummer {i}?"), f" Svar nummer {i} är {i * 7}.", i, "x")
        for i in range(30)
    ]
    seq_len = 64
    data = prepare_data(records, tokenizer, seq_len=seq_len, val_fraction=0.1, seed=0)
    blocks = data.train
    assert blocks.input_ids.shape[1] == seq_len
    assert data.num_train_records + data.num_val_records == 30
    total = blocks.input_ids.numel()
    # Only the last block may be padded: fewer than seq_len padding tokens.
    assert data.train_tokens <= total < data.train_tokens + seq_len
    eos = tokenizer.eos_token_id
    flat_ids = blocks.input_ids.flatten().tolist()
    flat_pos = blocks.position_ids.flatten().tolist()
    flat_tgt = blocks.targets.flatten().tolist()
    for i in range(len(flat_ids) - 1):
        if flat_tgt[i] != IGNORE_INDEX:
            # A target is always the next token of the same document and block.
            assert flat_tgt[i] == flat_ids[i + 1]
            assert flat_pos[i + 1] == flat_pos[i] + 1
        if flat_ids[i] == eos and i < data.train_tokens - 1 and (i + 1) % seq_len:
            assert flat_pos[i + 1] == 0, "a new document starts at position 0"
            assert flat_tgt[i] == IGNORE_INDEX, "no loss across a document boundary"
    # Loss on answers only: the prompt's tokens ("Question: ...") are never targets.
    answer_only = sum(t != IGNORE_INDEX for t in flat_tgt)
    all_tokens = prepare_data(
        records, tokenizer, seq_len=seq_len, val_fraction=0.1, seed=0, loss_on="all"
    )
    assert int((all_tokens.train.targets != IGNORE_INDEX).sum()) > answer_only > 0


def test_prepare_data_needs_two_records(tokenizer) -> None:
    with pytest.raises(InputError, match="at least two"):
        prepare_data([Record("", "ett", 1, "x")], tokenizer, seq_len=32, val_fraction=0.1, seed=0)


def test_chat_records_render_through_template_when_present(tokenizer) -> None:
    record = Record(
        "Question: Hej?\nAnswer:", " Hej!", 1, "x", (("user", "Hej?"), ("assistant", "Hej!"))
    )
    other = Record("", "Riksdagen stiftar lagar.", 2, "x")
    original = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        plain = prepare_data([record, other] * 3, tokenizer, seq_len=64, val_fraction=0.3, seed=0)
    finally:
        tokenizer.chat_template = original
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    try:
        templated = prepare_data(
            [record, other] * 3, tokenizer, seq_len=64, val_fraction=0.3, seed=0
        )
    finally:
        tokenizer.chat_template = original
    assert templated.train_tokens != plain.train_tokens


def _documents_of(blocks) -> list[list[int]]:
    """The packed documents back as token lists (a new one starts wherever position is 0)."""
    docs: list[list[int]] = []
    for ids, pos in zip(
        blocks.input_ids.flatten().tolist(), blocks.position_ids.flatten().tolist(), strict=True
    ):
        if pos == 0:
            docs.append([])
        docs[-1].append(ids)
    return docs


def test_chat_template_tokens_are_not_doubled(tokenizer) -> None:
    from oneseek_job.demo import CHAT_TEMPLATE

    # The demo template emits {{ bos_token }} and closes every turn with EOS itself.
    assert tokenizer.chat_template == CHAT_TEMPLATE
    records = [
        Record(
            "",
            "",
            i,
            "x",
            (("user", f"Vad gör riksdagen {i}?"), ("assistant", f"Den stiftar lagar {i}.")),
        )
        for i in range(6)
    ]
    data = prepare_data(records, tokenizer, seq_len=512, val_fraction=0.2, seed=0)
    train, _ = split_records(records, val_fraction=0.2, seed=0)
    expected = [
        tokenizer(
            tokenizer.apply_chat_template(
                [{"role": r, "content": c} for r, c in record.messages or ()], tokenize=False
            ),
            add_special_tokens=False,
        )["input_ids"]
        for record in train
    ]
    got = _documents_of(data.train)[: len(expected)]
    assert got == expected
    for doc in got:
        assert doc.count(tokenizer.bos_token_id) == 1 and doc.count(tokenizer.eos_token_id) == 2


@pytest.fixture(scope="module")
def legacy_sp_tokenizer():
    """A Llama-2-style tokenizer: SentencePiece BPE with the legacy '▁' prepend, BOS added."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    # Llama-2's tokenizer.json: prepend '▁' to every text, spaces become '▁' (legacy).
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    raw.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    corpus = [
        f"Question: Var ligger {town}?\nAnswer: {town} ligger i Sverige och har en kommun."
        for town in ["Stockholm", "Göteborg", "Malmö", "Uppsala", "Umeå", "Lund"] * 20
    ]
    raw.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    )
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", raw.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def test_answer_tokens_equal_tokenizing_prompt_and_answer_together(legacy_sp_tokenizer) -> None:
    tok = legacy_sp_tokenizer
    records = [
        Record(format_prompt(f"Var ligger {town}?"), f" {town} ligger i Sverige.", i, "x")
        for i, town in enumerate(["Stockholm", "Göteborg", "Malmö", "Uppsala", "Umeå", "Lund"])
    ]
    # Separately, the answer gets a spurious lone '▁' the model never sees at inference.
    alone = tok(records[0].answer, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone)[0] == "▁"
    data = prepare_data(records, tok, seq_len=512, val_fraction=0.2, seed=0)
    train, _ = split_records(records, val_fraction=0.2, seed=0)
    expected = [tok(r.prompt + r.answer)["input_ids"] + [tok.eos_token_id] for r in train]
    got = _documents_of(data.train)[: len(expected)]
    assert got == expected
    # The loss starts at the answer: the first target is the answer's first token.
    first_target = next(t for t in data.train.targets.flatten().tolist() if t != IGNORE_INDEX)
    prompt_len = len(tok(train[0].prompt)["input_ids"])
    assert first_target == expected[0][prompt_len]
    assert tok.convert_ids_to_tokens([first_target])[0].startswith("▁") and first_target != alone[0]
