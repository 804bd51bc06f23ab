"""torchrun data parallel on CPU (gloo): two ranks reach the single-process result."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _tiny

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_training import make_records
    from oneseek_job.config import LoraSettings, TrainSettings
    from oneseek_job.training import is_main_process, train_model

    out = Path(sys.argv[1])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    outcome = train_model(
        key="tiny", model_path=Path({model!r}), records=make_records(),
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        # Same global batch either way: 2 blocks of 64 tokens per optimizer step.
        train=TrainSettings(seq_len=64, batch_tokens=128, max_steps=6, learning_rate=3e-3,
                            log_every=2, seed=5),
        adapter_dir=out / "adapter", weights_path=out / "tiny.pth",
        checkpoint_dir=out / "ckpt", device="cpu",
    )
    (out / f"rank{{os.environ.get('RANK', '0')}}-main{{int(is_main_process())}}").write_text(
        f"{{outcome.final_val_loss!r}} {{world}}"
    )
    """
)


@pytest.mark.timeout(300)
def test_two_rank_gloo_matches_single_process(tmp_path: Path) -> None:
    model = _tiny.build_model(tmp_path / "tiny-llama", architecture="llama")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), model=str(model)))
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, str(script), str(single)], cwd=ROOT, check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            str(script),
            str(ddp),
        ],
        cwd=ROOT,
        check=True,
        timeout=240,
    )
    markers = sorted(p.name for p in ddp.glob("rank*"))
    assert markers == ["rank0-main1", "rank1-main0"]
    # Both ranks evaluated the same (all-reduced) validation loss.
    assert len({(ddp / m).read_text() for m in markers}) == 1
    assert (ddp / "rank0-main1").read_text().endswith(" 2")
    # Only rank 0 wrote artifacts, and data parallel reproduces the single-process weights
    # up to float summation order.
    assert (ddp / "adapter" / "adapter_model.safetensors").is_file()
    a = torch.load(single / "tiny.pth", weights_only=True)
    b = torch.load(ddp / "tiny.pth", weights_only=True)
    assert a.keys() == b.keys()
    moved = 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
        moved += int(not torch.equal(a[name], torch.zeros_like(a[name])))
    assert moved == len(a)
