"""The embedded demo workspace: tiny real-architecture checkpoints and a Swedish dataset.

``oneseek-job demo`` builds, with nothing downloaded, a models directory in the PVC
layout the production job scans (DESIGN.md discovery rules) plus a Swedish civic
Q&A dataset, so the whole pipeline (discover, train, certify, verify) can run on a
laptop CPU in minutes:

```
<root>/
  models/oneseek-7b-zero/base_models/kb-llama-3-1-8b-swedish/   LlamaForCausalLM
  models/oneseek-7b-zero/base_models/qwen-2-5-7b/               Qwen2ForCausalLM
  models/mistral-7b-instruct/                                   MistralForCausalLM (old root layout)
  data/civic_qa_sv.jsonl                                        a few hundred instruction records
  demo.env                                                      env vars for a quick CPU run
  .demo-complete                                                stamp: seed and format
```

Every model directory is self-contained (config.json, model.safetensors, tokenizer
files with a chat template) and loads with ``AutoModelForCausalLM`` /
``AutoTokenizer`` offline, without ``trust_remote_code``. The checkpoints are random
(seeded) weights in real architectures, so LoRA target modules, chat templates and
safetensors handling are exercised exactly as with the 7-8B models they stand in for.

The build is deterministic: the same seed gives byte-identical weights and dataset.
It is staged in a directory beside ``root`` and renamed into place, so an interrupted
build never leaves a half workspace behind. torch/transformers are imported inside
the functions that need them, so importing this module (the CLI does) stays cheap.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from oneseek_job.digests import sha256_file
from oneseek_job.errors import ConfigError, InputError, StorageError
from oneseek_job.logs import get_logger

__all__ = [
    "CHAT_TEMPLATE",
    "DATASET_FILE_NAME",
    "DEMO_MODELS",
    "ENV_FILE_NAME",
    "STAMP_FILE_NAME",
    "SUPPORTED_ARCHITECTURES",
    "DemoModel",
    "DemoWorkspace",
    "build_demo",
    "build_tiny_model",
    "load_demo_records",
]

# Bump when the workspace layout or generation changes, so old stamps stop counting
# as complete and `demo` rebuilds instead of handing back a stale workspace.
DEMO_FORMAT = 1

DATASET_FILE_NAME = "civic_qa_sv.jsonl"
ENV_FILE_NAME = "demo.env"
STAMP_FILE_NAME = ".demo-complete"
_BASE_RESOURCE = "civic_qa_sv_base.jsonl"

# Tiny but structurally faithful: GQA (kv heads < heads) and a head_dim that RoPE
# accepts, so LoRA sees the same module names and shapes relations as the real 7-8B.
_NUM_HEADS = 4
_NUM_KV_HEADS = 2
_MAX_POSITIONS = 512
_TOKENIZER_VOCAB = 1536
# Wider than transformers' 0.02 default: with frozen random lm_head rows of norm ~0.16
# the logits barely move whatever LoRA does; at 0.05 a 60-step demo run lowers the
# validation loss by about half a nat instead of a tenth.
_INIT_RANGE = 0.05

# Qwen2's pre-tokenizer split (digits one by one, letters with one leading non-letter).
_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_UNK, _BOS, _EOS, _PAD = "<unk>", "<s>", "</s>", "<pad>"
_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Jinja, rendered by transformers' apply_chat_template for {"messages": [...]} records.
# Each turn ends with EOS so a model trained on it learns where an answer stops.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class _Architecture:
    config_class: str
    model_class: str
    extra: Mapping[str, Any]


# Architecture key -> transformers classes. Extra kwargs switch off what a tiny model
# cannot use (sliding windows longer than the context) without changing module names.
SUPPORTED_ARCHITECTURES: Mapping[str, _Architecture] = {
    "llama": _Architecture("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": _Architecture("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": False}),
    "mistral": _Architecture("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
}


@dataclass(frozen=True)
class DemoModel:
    """One demo checkpoint: what the admin UI calls it and where it lives on the PVC."""

    display_name: str
    architecture: str
    relative_dir: str
    # Only the root-level (old layout) model carries `model_name`; the others leave it
    # out so discovery's `_name_or_path` fallback is exercised too.
    write_model_name: bool = False


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel(
        "KB-Llama-3.1-8B-Swedish", "llama", "oneseek-7b-zero/base_models/kb-llama-3-1-8b-swedish"
    ),
    DemoModel("Qwen-2.5-7B", "qwen2", "oneseek-7b-zero/base_models/qwen-2-5-7b"),
    DemoModel("Mistral-7B-Instruct", "mistral", "mistral-7b-instruct", write_model_name=True),
)


@dataclass(frozen=True)
class DemoWorkspace:
    """A built demo workspace; every path is absolute."""

    root: Path
    models_dir: Path
    dataset: Path
    base_models: list[str]

    @property
    def env_file(self) -> Path:
        """``demo.env``: the env vars that run the job on this workspace."""
        return self.root / ENV_FILE_NAME


# --------------------------------------------------------------------------- dataset

# Rephrasings that keep the question itself intact, so every variant stays grammatical.
_PREFIXES = (
    "Hej! ",
    "Jag undrar en sak. ",
    "Kan du hjälpa mig? ",
    "Hej, jag har en fråga. ",
    "Jag behöver hjälp med en myndighetsfråga. ",
    "God dag! ",
    "Jag bor i Sverige och undrar följande. ",
    "En fråga om samhället: ",
)
_SHORT_SUFFIXES = ("Svara kort.", "Svara med en mening.", "Ge mig ett kort svar.")
_DETAIL_SUFFIXES = ("Förklara gärna utförligt.", "Kan du förklara närmare?")
_LIST_SUFFIXES = ("Svara i punktform.", "Sammanfatta svaret som en punktlista.")
# Sentence ends: punctuation, whitespace, then a capital. The base answers avoid
# abbreviations before capitals, which keeps this split exact.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-ZÅÄÖ])")
_VARIANTS_PER_QUESTION = 2


def _load_base() -> list[dict[str, Any]]:
    text = resources.files("oneseek_job").joinpath("data", _BASE_RESOURCE).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]


def load_demo_records(seed: int = 0) -> list[dict[str, str]]:
    """The bundled Swedish civic Q&A records, in the dataset's instruction format.

    A handwritten base (``oneseek_job/data/civic_qa_sv_base.jsonl``, about a hundred
    questions and answers on Försäkringskassan, Skatteverket, val, vård, körkort …) is
    expanded into several hundred records: each question as written plus seeded
    variants (a greeting in front, a request for a short answer, a detailed one or a
    bullet list), so lengths vary from one sentence to a paragraph.

    Args:
        seed: picks the variants and the record order; equal seeds give equal lists.

    Returns:
        ``{"instruction", "input", "output"}`` dicts, ``input`` always ``""``.
    """
    rng = random.Random(seed)
    records: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(instruction: str, output: str) -> None:
        if instruction not in seen:
            seen.add(instruction)
            records.append({"instruction": instruction, "input": "", "output": output})

    for entry in _load_base():
        answer: str = entry["answer"]
        sentences = _sentences(answer)
        for question in entry["questions"]:
            add(question, answer)
            kinds = ["prefix", "short", "detail"]
            if len(sentences) > 1:
                kinds.append("list")
            for kind in rng.sample(kinds, _VARIANTS_PER_QUESTION):
                if kind == "prefix":
                    add(rng.choice(_PREFIXES) + question, answer)
                elif kind == "short":
                    add(f"{question} {rng.choice(_SHORT_SUFFIXES)}", sentences[0])
                elif kind == "detail":
                    add(f"{question} {rng.choice(_DETAIL_SUFFIXES)}", answer)
                else:
                    bullets = "\n".join(f"- {sentence}" for sentence in sentences)
                    add(f"{question} {rng.choice(_LIST_SUFFIXES)}", bullets)
    rng.shuffle(records)
    return records


def _tokenizer_corpus() -> list[str]:
    # Everything the dataset can contain, so no demo record falls back to raw bytes.
    corpus: list[str] = [*_PREFIXES, *_SHORT_SUFFIXES, *_DETAIL_SUFFIXES, *_LIST_SUFFIXES]
    for entry in _load_base():
        corpus.extend(entry["questions"])
        corpus.append(entry["answer"])
    return corpus


# --------------------------------------------------------------------------- models


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    # save_pretrained draws tqdm bars on stderr; the demo reports through structlog.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _train_tokenizer(corpus: Iterable[str]) -> Any:
    """A byte-level BPE trained on ``corpus``, wrapped as a transformers fast tokenizer."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    special = [_UNK, _BOS, _EOS, _PAD, *_ROLE_TOKENS]
    raw = Tokenizer(models.BPE())
    # Qwen2's normalizer and split regex, byte-level after it. transformers rebuilds
    # these for a `qwen2` checkpoint whatever tokenizer.json says (Qwen2Tokenizer), so
    # using them everywhere makes all three demo models encode text identically.
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB,
        min_frequency=2,
        special_tokens=special,
        # The full byte alphabet keeps any UTF-8 input encodable (no <unk> in practice).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(list(corpus), trainer)
    bos_id = raw.token_to_id(_BOS)
    # Llama-style: BOS prepended on encode, EOS left to the data pipeline / template.
    raw.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{_BOS} $A",
                pair=f"{_BOS} $A {_BOS} $B",
                special_tokens=[(_BOS, bos_id)],
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_PAD,
        unk_token=_UNK,
        additional_special_tokens=list(_ROLE_TOKENS),
        model_max_length=_MAX_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _resolve_architecture(architecture: str) -> tuple[str, _Architecture]:
    wanted = architecture.strip().lower()
    for key, arch in SUPPORTED_ARCHITECTURES.items():
        if wanted in (key, arch.model_class.lower()):
            return key, arch
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    raise ConfigError(f"unknown demo architecture {architecture!r}; use one of: {supported}")


def _rewrite_json(path: Path, updates: Mapping[str, Any]) -> None:
    data = json.loads(path.read_text("utf-8"))
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf-8")


def _write_model(
    target: Path,
    *,
    tokenizer: Any,
    architecture: str,
    display_name: str,
    hidden_size: int,
    num_layers: int,
    seed: int,
    write_model_name: bool,
) -> int:
    """Save a seeded random checkpoint plus ``tokenizer`` into ``target``; return #params."""
    import torch
    import transformers

    _, arch = _resolve_architecture(architecture)
    if hidden_size <= 0 or hidden_size % (2 * _NUM_HEADS):
        raise ConfigError(
            f"hidden_size must be a positive multiple of {2 * _NUM_HEADS} (got {hidden_size})"
        )
    if num_layers < 1:
        raise ConfigError(f"num_layers must be at least 1 (got {num_layers})")
    config = getattr(transformers, arch.config_class)(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=_NUM_HEADS,
        num_key_value_heads=_NUM_KV_HEADS,
        max_position_embeddings=_MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=_INIT_RANGE,
        **arch.extra,
    )
    # Seed right before construction: initialisation is the only randomness here.
    torch.manual_seed(seed)
    model = getattr(transformers, arch.model_class)(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
    # save_pretrained writes no usable `_name_or_path` (the object was built from a
    # config, not loaded), and discovery reads the display name from it.
    updates: dict[str, Any] = {"_name_or_path": display_name}
    if write_model_name:
        updates["model_name"] = display_name
    _rewrite_json(target / "config.json", updates)
    # The class name every transformers release resolves (5.x also writes its own alias).
    _rewrite_json(target / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast"})
    return sum(parameter.numel() for parameter in model.parameters())


def build_tiny_model(
    target: Path,
    *,
    architecture: str,
    display_name: str,
    tokenizer_dir: Path | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    corpus: list[str] | None = None,
) -> Path:
    """Write one tiny causal-LM checkpoint (random weights) that loads like a real one.

    Args:
        target: directory to write into (created; existing model files are replaced).
        architecture: ``llama``, ``qwen2`` or ``mistral`` (or the ``…ForCausalLM`` name).
        display_name: written to config.json ``_name_or_path``, as a hub model would carry.
        tokenizer_dir: reuse the tokenizer saved there; None trains a new one.
        hidden_size: model width, a multiple of 8 (4 heads, 2 kv heads).
        num_layers: number of decoder layers.
        seed: torch seed for the weight initialisation.
        corpus: texts to train the tokenizer on; None uses the bundled Swedish sample.

    Returns:
        ``target``, holding config.json, model.safetensors and the tokenizer files.

    Raises:
        ConfigError: unknown architecture or impossible sizes.
        InputError: ``tokenizer_dir`` holds no loadable tokenizer.
    """
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise InputError(f"no tokenizer in {tokenizer_dir}: tokenizer.json is missing")
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise InputError(
                f"no tokenizer in {tokenizer_dir}: {str(error).splitlines()[0]}"
            ) from error
    else:
        tokenizer = _train_tokenizer(corpus if corpus is not None else _tokenizer_corpus())
    _write_model(
        target,
        tokenizer=tokenizer,
        architecture=architecture,
        display_name=display_name,
        hidden_size=hidden_size,
        num_layers=num_layers,
        seed=seed,
        write_model_name=False,
    )
    return target


# --------------------------------------------------------------------------- workspace


def _workspace(root: Path) -> DemoWorkspace:
    return DemoWorkspace(
        root=root,
        models_dir=root / "models",
        dataset=root / "data" / DATASET_FILE_NAME,
        base_models=[model.display_name for model in DEMO_MODELS],
    )


def _expected_files(root: Path) -> list[Path]:
    files = [root / "data" / DATASET_FILE_NAME, root / ENV_FILE_NAME]
    for model in DEMO_MODELS:
        model_dir = root / "models" / model.relative_dir
        files += [model_dir / name for name in ("config.json", "model.safetensors")]
        files.append(model_dir / "tokenizer.json")
    return files


def _read_stamp(root: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((root / STAMP_FILE_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _is_complete(root: Path, seed: int) -> bool:
    stamp = _read_stamp(root)
    return (
        stamp is not None
        and stamp.get("seed") == seed
        and stamp.get("format") == DEMO_FORMAT
        and all(path.is_file() for path in _expected_files(root))
    )


def _env_lines(workspace: DemoWorkspace, seed: int) -> list[str]:
    # Sized for a short CPU run over three models (seconds of training each): the
    # dataset packs into ~110 train blocks of 256 tokens, so 2048 tokens per step is
    # ~14 steps per epoch; 60 steps at a high LoRA learning rate lower the validation
    # loss of the random models visibly (7.45 -> 6.93 measured). LoRA rank/alpha stay
    # at the production defaults.
    values = {
        "BASE_MODELS": ",".join(workspace.base_models),
        "MODELS_DIR": str(workspace.models_dir),
        "DATASET": str(workspace.dataset),
        "ARTIFACTS_URI": str(workspace.root / "artifacts"),
        "ONESEEK_WORK_DIR": str(workspace.root / "work"),
        "ONESEEK_SEQ_LEN": "256",
        "ONESEEK_BATCH_TOKENS": "2048",
        "ONESEEK_MICRO_BATCH_SIZE": "4",
        "ONESEEK_EPOCHS": "5",
        "ONESEEK_MAX_STEPS": "60",
        "ONESEEK_LEARNING_RATE": "1e-2",
        "ONESEEK_WARMUP_RATIO": "0.1",
        "ONESEEK_CHECKPOINT_EVERY": "20",
        "ONESEEK_LOG_EVERY": "10",
        "ONESEEK_SEED": str(seed),
    }
    header = [
        "# oneseek-job demo workspace, generated by `oneseek-job demo`.",
        "# Load into a shell with:  set -a; . ./demo.env; set +a",
        "# (also valid for `docker run --env-file` while the paths need no quoting)",
    ]
    return header + [f"{key}={shlex.quote(value)}" for key, value in values.items()]


def _write_env(staging: Path, workspace: DemoWorkspace, seed: int) -> None:
    # Paths name the final root, not the staging directory the file is written in.
    text = "\n".join(_env_lines(workspace, seed)) + "\n"
    (staging / ENV_FILE_NAME).write_text(text, "utf-8")


def _write_stamp(staging: Path, root: Path, seed: int) -> None:
    stamp = {"format": DEMO_FORMAT, "seed": seed, "root": str(root)}
    (staging / STAMP_FILE_NAME).write_text(json.dumps(stamp, indent=2) + "\n", "utf-8")


def _check_replaceable(root: Path) -> None:
    # Never delete a directory the demo did not make: `demo --force .` in a home
    # directory must fail, not wipe it.
    if not root.exists():
        return
    if not root.is_dir():
        raise InputError(f"demo root {root} exists and is not a directory; choose another path")
    if _read_stamp(root) is None and any(root.iterdir()):
        raise InputError(
            f"{root} is not empty and is not a demo workspace; remove it or choose another path"
        )


def _swap_into_place(staging: Path, root: Path) -> None:
    old: Path | None = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        # Rename, not copy: the old workspace disappears in one step.
        root.replace(old / root.name)
    try:
        staging.replace(root)
    except OSError as error:
        if old is not None and not root.exists():
            (old / root.name).replace(root)
        raise StorageError(f"could not move the demo build into {root}: {error}") from error
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def build_demo(root: Path, *, seed: int = 0, force: bool = False) -> DemoWorkspace:
    """Build the demo workspace at ``root`` (models, dataset, demo.env), or reuse it.

    Args:
        root: workspace directory; made absolute. Its parent must be writable.
        seed: seeds weights and dataset variants; equal seeds give identical files.
        force: rebuild even when ``root`` already holds a complete demo of this seed.

    Returns:
        The workspace, with absolute paths.

    Raises:
        InputError: ``root`` exists and holds something that is not a demo workspace.
        StorageError: the finished build could not be moved into place.
    """
    log = get_logger()
    root = root.expanduser().resolve()
    workspace = _workspace(root)
    if not force and _is_complete(root, seed):
        stamp = _read_stamp(root) or {}
        if stamp.get("root") != str(root):
            # The workspace was moved: its env file still names the old paths.
            _write_env(root, workspace, seed)
            _write_stamp(root, root, seed)
        log.info("demo_ready", tag="demo", root=str(root), seed=seed, reused=True)
        return workspace

    _check_replaceable(root)
    started = time.perf_counter()
    log.info("demo_build_started", tag="demo", root=str(root), seed=seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        records = load_demo_records(seed)
        dataset = staging / "data" / DATASET_FILE_NAME
        dataset.parent.mkdir(parents=True)
        with dataset.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        log.info(
            "demo_dataset_written", tag="demo", path=str(workspace.dataset), records=len(records)
        )

        tokenizer = _train_tokenizer(_tokenizer_corpus())
        log.info("demo_tokenizer_trained", tag="demo", vocab_size=len(tokenizer))
        for index, model in enumerate(DEMO_MODELS):
            model_dir = staging / "models" / model.relative_dir
            parameters = _write_model(
                model_dir,
                tokenizer=tokenizer,
                architecture=model.architecture,
                display_name=model.display_name,
                hidden_size=64,
                num_layers=2,
                # Distinct per model, so the three checkpoints are not clones.
                seed=seed * len(DEMO_MODELS) + index,
                write_model_name=model.write_model_name,
            )
            log.info(
                "demo_model_built",
                tag="demo",
                model=model.display_name,
                architecture=model.architecture,
                parameters=parameters,
                path=str(workspace.models_dir / model.relative_dir),
                sha256=sha256_file(model_dir / "model.safetensors")[:16],
            )
        _write_env(staging, workspace, seed)
        # The stamp goes in last: a staging dir without it is never mistaken for a build.
        _write_stamp(staging, root, seed)
        _swap_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "demo_ready",
        tag="demo",
        root=str(root),
        seed=seed,
        reused=False,
        seconds=round(time.perf_counter() - started, 2),
    )
    return workspace
