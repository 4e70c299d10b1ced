"""`kt-moe finetune` runs end to end: trains the experts' LoRA of a small Qwen3-MoE (the loss goes
down), saves the adapter, and plain transformers + PEFT loading it give kt-moe's held-out loss."""

import re
import sys


def test_finetune_example_runs_and_peft_reproduces_the_loss(run_python, tmp_path):
    out = run_python("-m", "kt_moe.cli", "finetune", "--steps", "12", "--batch", "4", "--seq", "64", "--threads", "2",
                     "--output", str(tmp_path / "run"), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    losses = [float(x) for x in re.findall(r"^step +\d+ +loss (\S+)", out.stdout, re.M)]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert re.search(r"tokens/s +peak RSS \d+ MB", out.stdout)
    base, kt, peft = map(float, re.search(r"held-out loss: base model (\S+), kt-moe (\S+), plain transformers \+ PEFT "
                                          r"with the saved adapter (\S+)", out.stdout).groups())
    assert kt < base and abs(peft - kt) <= 0.01 * kt
    assert sorted(p.name for p in (tmp_path / "run" / "adapter").iterdir()) == ["adapter_config.json",
                                                                               "adapter_model.safetensors"]
    assert "Traceback" not in out.stderr
