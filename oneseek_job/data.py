"""JSONL records → tokenized, packed blocks with document boundaries and a deterministic split.

Three record shapes (DESIGN.md): instruction (``instruction``/``question``, optional
``input``, ``output``/``response``), chat (``messages``) and plain ``text``. Instruction
records use the original's prompt format ``Question: {q}\\nAnswer: {a}``.

Packing: every document (prompt + answer + EOS) is tokenized once and the token stream is
cut into full ``seq_len`` blocks; only the very last block is padded. ``position_ids``
restart at 0 at every document start, which is what transformers (>= 5) reads to build a
block-diagonal causal mask for SDPA when no 2D attention mask is passed, so attention
never crosses a document boundary. Targets are already shifted (``targets[i]`` is the
token that position ``i`` predicts) and ``-100`` wherever there is nothing to learn: the
prompt (with ``loss_on="answer"``), the last token of a document, padding.

``torch`` is imported inside :func:`prepare_data` only, so reading and validating a
dataset (the pre-flight check) stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oneseek_job.errors import InputError
from oneseek_job.logs import get_logger

if TYPE_CHECKING:
    import torch

__all__ = [
    "IGNORE_INDEX",
    "MAX_RECORD_BYTES",
    "MAX_RECORD_DEPTH",
    "Batch",
    "Blocks",
    "PackedData",
    "Record",
    "dataset_files",
    "format_prompt",
    "load_records",
    "make_batch",
    "prepare_data",
    "render_record",
]

IGNORE_INDEX = -100
# A JSONL line larger than this is almost certainly a broken export (a whole file on one
# line, a base64 blob), not a training example.
MAX_RECORD_BYTES = 1_000_000
# Our three shapes nest three levels deep (record → messages → message); metadata fields
# may add a little, but hundreds of levels are an attack on the parser, not data.
MAX_RECORD_DEPTH = 32
_SHOWN_BAD = 5
_ROLES = frozenset({"system", "user", "assistant"})

log = get_logger(__name__)


@dataclass(frozen=True)
class Record:
    """One training example.

    ``prompt`` is the part without loss (by default) and ``answer`` the part to learn. A
    ``{"text"}`` record has an empty prompt. A chat record keeps its ``messages`` as
    ``(role, content)`` pairs and is rendered with the tokenizer's chat template in
    :func:`prepare_data`; ``prompt``/``answer`` then hold the plain-format fallback.
    """

    prompt: str
    answer: str
    line: int
    source: str
    messages: tuple[tuple[str, str], ...] | None = None

    def content_key(self) -> str:
        """Stable text identifying the example (for the seeded split)."""
        if self.messages is not None:
            return json.dumps(self.messages, ensure_ascii=False)
        return f"{self.prompt}\x00{self.answer}"


def format_prompt(question: str, extra_input: str = "") -> str:
    """The original's prompt, up to and including ``Answer:`` (the answer adds its space)."""
    q = f"{question}\n{extra_input}" if extra_input else question
    return f"Question: {q}\nAnswer:"


def dataset_files(path: Path) -> list[Path]:
    """The JSONL files of a dataset: the file itself, or a directory's ``*.jsonl`` (sorted).

    Raises:
        InputError: the path does not exist or the directory holds no ``*.jsonl``.
    """
    if path.is_file():
        return [path]
    if path.exists() and not path.is_dir():
        # A FIFO would block the reader forever and /dev/zero never ends: refuse both.
        raise InputError(f"DATASET {path} is not a regular file or directory (a FIFO or device)")
    if path.is_dir():
        files = sorted(
            p for p in path.glob("*.jsonl") if p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise InputError(f"DATASET {path} is a directory without *.jsonl files; add some")
        return files
    raise InputError(f"DATASET {path} does not exist; point DATASET at a JSONL file or directory")


def _decode(raw: bytes) -> Any:
    """One JSONL line → a JSON value, or ValueError saying (briefly) why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None
    except RecursionError:
        raise ValueError("nested deeper than Python's JSON parser allows") from None
    except ValueError:  # the only other ValueError: an integer longer than int() converts
        raise ValueError("holds an integer with more than 4300 digits") from None
    if _depth(obj) > MAX_RECORD_DEPTH:
        raise ValueError(f"nested deeper than {MAX_RECORD_DEPTH} levels")
    return obj


def _depth(value: Any) -> int:
    # Iterative: the value came from json.loads, so it is no deeper than the parser allowed,
    # but a recursive walk could still hit the interpreter's limit.
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > MAX_RECORD_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _utf8(text: str, field: str) -> str:
    """``text`` if it can be encoded (a lone surrogate such as ``"\\ud800"`` cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field!r} contains a lone surrogate (\\ud800-\\udfff escape)") from None
    return text


def _text_field(obj: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = obj.get(name)
        if isinstance(value, str) and value.strip():
            return _utf8(value, name)
    return None


def _parse(obj: Any, line: int, source: str) -> Record:
    """One decoded JSON value → Record, or ValueError saying what is wrong with it."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        pairs: list[tuple[str, str]] = []
        for message in messages:
            if not isinstance(message, dict):
                raise ValueError("every message must be an object with role and content")
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or role not in _ROLES or not isinstance(content, str):
                raise ValueError("every message needs role system/user/assistant and content")
            pairs.append((str(role), _utf8(content, "content")))
        if pairs[-1][0] != "assistant" or not pairs[-1][1].strip():
            raise ValueError("the last message must be a non-empty assistant message")
        if not any(role == "user" for role, _ in pairs):
            raise ValueError("'messages' has no user message")
        # Plain fallback for tokenizers without a chat template: earlier turns are the prompt.
        prompt = "\n".join(
            f"Question: {c}" if r == "user" else (f"Answer: {c}" if r == "assistant" else c)
            for r, c in pairs[:-1]
        )
        return Record(f"{prompt}\nAnswer:", " " + pairs[-1][1], line, source, tuple(pairs))
    if "text" in obj and not any(k in obj for k in ("instruction", "question")):
        text = _text_field(obj, "text")
        if text is None:
            raise ValueError("'text' must be a non-empty string")
        return Record("", text, line, source)
    question = _text_field(obj, "instruction", "question")
    answer = _text_field(obj, "output", "response")
    if question is None or answer is None:
        raise ValueError(
            "needs instruction|question and output|response (non-empty strings), "
            "or messages, or text"
        )
    extra = obj.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError("'input' must be a string")
    _utf8(extra, "input")
    return Record(format_prompt(question, extra.strip()), " " + answer, line, source)


def load_records(path: Path, *, skip_bad_records: bool = False) -> list[Record]:
    """Read and validate every record of a dataset.

    Blank lines are ignored. A bad record is a line that is not UTF-8, not JSON, not one of
    the three shapes, or larger than ``MAX_RECORD_BYTES``.

    Args:
        path: a JSONL file or a directory of ``*.jsonl`` files (read in sorted order).
        skip_bad_records: log the bad records as a warning and keep the good ones instead
            of failing.

    Raises:
        InputError: the dataset is missing or empty, or has bad records (file:line of the
            first few and the count) and ``skip_bad_records`` is off.
    """
    records: list[Record] = []
    bad: list[str] = []
    for file in dataset_files(path):
        try:
            handle = file.open("rb")
        except OSError as error:
            raise InputError(f"cannot read dataset file {file}: {error.strerror}") from error
        with handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                where = f"{file}:{number}"
                if len(raw) > MAX_RECORD_BYTES:
                    bad.append(f"{where}: record larger than {MAX_RECORD_BYTES} bytes")
                    continue
                try:
                    records.append(_parse(_decode(raw), number, str(file)))
                except ValueError as error:
                    bad.append(f"{where}: {error}")
    if bad:
        shown = "; ".join(bad[:_SHOWN_BAD])
        more = f" (and {len(bad) - _SHOWN_BAD} more)" if len(bad) > _SHOWN_BAD else ""
        if not skip_bad_records:
            raise InputError(
                f"{len(bad)} bad dataset record(s): {shown}{more}; "
                "fix them or pass --skip-bad-records"
            )
        log.warning(
            "bad_records_skipped", tag="config", count=len(bad), records=bad[:50], kept=len(records)
        )
    if len(records) < 2:
        # Training and validation need one record each: say so now, not after model loading.
        found = "only one usable record" if records else "no usable records"
        raise InputError(
            f"DATASET {path} has {found}; it needs at least two (one is held out for validation)"
        )
    return records


@dataclass
class Blocks:
    """Packed ``[n, seq_len]`` int64 tensors.

    ``targets`` is already shifted: position ``i`` is trained to predict ``targets[i]``.
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    position_ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Batch:
    """One micro-batch: its blocks laid end to end in a single row, ready for the device.

    Everything a kernel needs to attend per document and a loss needs to touch only target
    positions is computed here, on the host, so the step itself never waits for the device
    to answer a question (no ``.item()``, no boolean indexing on the device).
    """

    input_ids: torch.Tensor  # (1, N)
    position_ids: torch.Tensor  # (1, N), restarting at 0 at every document
    keep: torch.Tensor  # (K,) flat positions that have a target
    targets: torch.Tensor  # (K,) their targets
    cu_seqlens: torch.Tensor  # (S + 1,) int32 document boundaries (varlen kernels)
    document_ids: torch.Tensor  # (1, N) int32 document number of every position (BlockMask)
    max_seqlen: int

    def to(self, device: Any) -> Batch:
        """A copy on ``device`` (asynchronous from pinned memory on CUDA)."""
        move = {f: getattr(self, f).to(device, non_blocking=True) for f in _BATCH_TENSORS}
        return Batch(**move, max_seqlen=self.max_seqlen)

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of the model's forward (transformers' varlen kwarg names)."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_seqlen,
            "max_length_k": self.max_seqlen,
            "document_ids": self.document_ids,
            "use_cache": False,
        }


_BATCH_TENSORS = ("input_ids", "position_ids", "keep", "targets", "cu_seqlens", "document_ids")


def make_batch(blocks: Blocks, idx: Sequence[int]) -> Batch:
    """The micro-batch of blocks ``idx`` (host tensors; see :class:`Batch`)."""
    import torch

    ids = blocks.input_ids[list(idx)].reshape(1, -1)
    pos = blocks.position_ids[list(idx)].reshape(1, -1)
    targets = blocks.targets[list(idx)].reshape(-1)
    # Every block starts a document (a cut one restarts its positions), so the flat row's
    # documents are exactly the runs that start where the position is 0.
    starts = (pos[0] == 0).nonzero().flatten()
    total = torch.tensor([pos.shape[1]])
    cu = torch.cat([starts, total]).to(torch.int32)
    keep = (targets != IGNORE_INDEX).nonzero().flatten()
    return Batch(
        input_ids=ids,
        position_ids=pos,
        keep=keep,
        targets=targets[keep],
        cu_seqlens=cu,
        document_ids=((pos[0] == 0).cumsum(0) - 1).to(torch.int32).unsqueeze(0),
        max_seqlen=int((cu[1:] - cu[:-1]).max()),
    )


@dataclass
class PackedData:
    """The tokenized, packed dataset of one model (one tokenizer)."""

    train: Blocks
    val: Blocks
    train_tokens: int  # real (non-padding) tokens in the train blocks
    val_tokens: int
    num_train_records: int
    num_val_records: int


def split_records(
    records: Sequence[Record], *, val_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Deterministic train/val split: order by a seeded hash of the content, take the head.

    The same dataset and seed give the same validation set on every run and resume,
    whatever the file order; at least one record lands on each side.
    """

    def rank(item: tuple[int, Record]) -> tuple[str, int]:
        digest = hashlib.sha256(f"{seed}\x00{item[1].content_key()}".encode()).hexdigest()
        return digest, item[0]

    ordered = sorted(enumerate(records), key=rank)
    n_val = min(max(1, round(len(records) * val_fraction)), len(records) - 1)
    val_ids = {index for index, _ in ordered[:n_val]}
    train = [r for i, r in enumerate(records) if i not in val_ids]
    val = [r for i, r in enumerate(records) if i in val_ids]
    return train, val


def render_record(record: Record, tokenizer: Any) -> tuple[str, str, bool]:
    """``(prompt, answer, templated)``: through the tokenizer's chat template when it has one.

    Raises:
        Exception: whatever the template raises (the pre-flight renders in a sandbox).
    """
    if record.messages is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": r, "content": c} for r, c in record.messages]
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if isinstance(prompt, str) and isinstance(full, str) and full.startswith(prompt):
            return prompt, full[len(prompt) :], True
    return record.prompt, record.answer, False


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _documents(
    records: Sequence[Record], tokenizer: Any, loss_on: str
) -> list[tuple[list[int], list[bool]]]:
    """Token ids and a per-token 'is trained on' flag for every record.

    Each document is tokenized as one text, prompt and answer together, exactly as the
    model will see it at inference: tokenizing the answer on its own put a spurious ``▁``
    before it on legacy SentencePiece tokenizers (Llama-2, Mistral v0.1-0.2). The answer
    starts where the prompt's own tokenization stops matching (two batched calls).

    A chat template renders its own special tokens, so templated text is tokenized without
    adding BOS (as ``apply_chat_template(tokenize=True)`` does), and EOS is appended only
    when the answer does not already contain it (templates close each turn with it).
    """
    rendered = [render_record(r, tokenizer) for r in records]
    eos = tokenizer.eos_token_id
    docs: list[tuple[list[int], list[bool]]] = [([], [])] * len(rendered)
    for templated in (False, True):
        group = [(i, p, a) for i, (p, a, t) in enumerate(rendered) if t == templated]
        if not group:
            continue
        special = not templated
        fulls = tokenizer([p + a for _, p, a in group], add_special_tokens=special)["input_ids"]
        prompts = tokenizer([p for _, p, _ in group], add_special_tokens=special)["input_ids"]
        for (index, _, _), full, prompt in zip(group, fulls, prompts, strict=True):
            n_prompt = _common_prefix(full, prompt)
            ids = list(full)
            if eos is not None and eos not in ids[n_prompt:]:
                ids.append(eos)
            docs[index] = (ids, [loss_on == "all"] * n_prompt + [True] * (len(ids) - n_prompt))
    return docs


def _pack(docs: list[tuple[list[int], list[bool]]], seq_len: int, pad_id: int) -> Blocks:
    import torch

    ids: list[int] = []
    tgt: list[int] = []
    pos: list[int] = []
    for tokens, learn in docs:
        start = len(ids)
        for i, token in enumerate(tokens):
            # A document cut by a block edge continues as a new segment (positions restart).
            if (len(ids) % seq_len == 0) and i > 0:
                start = len(ids)
            ids.append(token)
            pos.append(len(ids) - 1 - start)
            nxt = i + 1
            # Target = next token of the same document and the same block; else nothing.
            same_block = len(ids) % seq_len != 0
            if nxt < len(tokens) and same_block and learn[nxt]:
                tgt.append(tokens[nxt])
            else:
                tgt.append(IGNORE_INDEX)
    remainder = (-len(ids)) % seq_len
    if remainder:
        # Padding is its own segment (positions from 0), so no real token attends to it.
        ids.extend([pad_id] * remainder)
        tgt.extend([IGNORE_INDEX] * remainder)
        pos.extend(range(remainder))
    shape = (-1, seq_len)
    return Blocks(
        input_ids=torch.tensor(ids, dtype=torch.long).view(shape),
        targets=torch.tensor(tgt, dtype=torch.long).view(shape),
        position_ids=torch.tensor(pos, dtype=torch.long).view(shape),
    )


def prepare_data(
    records: Sequence[Record],
    tokenizer: Any,
    *,
    seq_len: int,
    val_fraction: float,
    seed: int,
    loss_on: str = "answer",
) -> PackedData:
    """Split, tokenize once and pack ``records`` for one tokenizer.

    Args:
        records: validated records (see :func:`load_records`).
        tokenizer: a transformers tokenizer (``__call__`` with batched input).
        seq_len: block length in tokens.
        val_fraction: share of records held out for validation.
        seed: split seed; the same seed gives the same validation records.
        loss_on: ``"answer"`` (answer + EOS only) or ``"all"`` tokens.

    Raises:
        InputError: fewer than two records, or nothing to learn after tokenization.
    """
    if len(records) < 2:
        raise InputError(
            f"the dataset has {len(records)} usable record(s); training and validation "
            "need at least two"
        )
    train_records, val_records = split_records(records, val_fraction=val_fraction, seed=seed)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    train_docs = _documents(train_records, tokenizer, loss_on)
    val_docs = _documents(val_records, tokenizer, loss_on)
    train = _pack(train_docs, seq_len, int(pad_id))
    val = _pack(val_docs, seq_len, int(pad_id))
    if int((train.targets != IGNORE_INDEX).sum()) == 0:
        raise InputError("the training records have no answer tokens to learn from")
    return PackedData(
        train=train,
        val=val,
        train_tokens=sum(len(t) for t, _ in train_docs),
        val_tokens=sum(len(t) for t, _ in val_docs),
        num_train_records=len(train_records),
        num_val_records=len(val_records),
    )
