from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from amoeba_core.data import split_names, text_splits, token_windows
from amoeba_core.errors import AmoebaError
from amoeba_core.finetune import CHECKPOINT, train_docs, FinetuneConfig, finetune, load_adapted, perplexity, steps_done, train_windows
from amoeba_core.model import LoadedModel, load_model
from amoeba_core.smol import adapter_state, merge_for_shape
from amoeba_core.strategy import Strategy

CFG = FinetuneConfig(steps=4, k=3, seq_len=32, batch=2, lr=5e-3, warmup=1, rank=4, experts=3, top_k=2, checkpoint_every=2)


def test_training_lowers_loss_and_adapters_reload(loaded: LoadedModel, strategy: Strategy, tmp_path: Path) -> None:
    test = token_windows(loaded.tokenizer, text_splits()["train"], 32, max_windows=4)
    shape = strategy.shape(3, 0.75)
    before = perplexity(loaded.model, shape, strategy, test)
    cfg = FinetuneConfig(**{**CFG.__dict__, "steps": 8, "lr": 2e-2})
    model = finetune(loaded, strategy, cfg, tmp_path)
    after = perplexity(model, shape, strategy, test)
    assert after < before
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 8 and '"largest"' in log[0] and '"smallest"' in log[0]
    again = load_adapted(load_model("tiny"), strategy, tmp_path)
    assert perplexity(again, shape, strategy, test) == pytest.approx(after, rel=1e-6)
    # the exported subnet of the adapted model scores the same
    ids = test[:2]
    with torch.no_grad():
        from amoeba_core.smol import adapted_subnet

        with adapted_subnet(again, shape, strategy) as m:
            want = m(input_ids=ids).logits
        got = merge_for_shape(again, shape, strategy)(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_resume_matches_uninterrupted_run(strategy: Strategy, tmp_path: Path) -> None:
    full = finetune(load_model("tiny"), strategy, CFG, tmp_path / "a")
    finetune(load_model("tiny"), strategy, CFG, tmp_path / "b", stop_after=2)
    assert steps_done(tmp_path / "b") == 2
    resumed = finetune(load_model("tiny"), strategy, CFG, tmp_path / "b", resume=True)
    assert steps_done(tmp_path / "b") == 4
    a, b = adapter_state(full), adapter_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_train_split_disjoint_from_stage1_splits(loaded: LoadedModel) -> None:
    names = split_names()
    train = set(names["train"])
    for other in ("calib", "val", "test"):
        assert not train & set(names[other])
    texts = text_splits()
    held = set(texts["val"]) | set(texts["test"]) | set(texts["calib"])
    docs = train_docs()
    assert docs and not held & set(docs) and set(docs) <= set(texts["train"])
    # no long passage of held-out text appears in the fine-tuning text
    joined = "\n".join(docs)
    for d in held:
        for i in range(0, max(1, len(d) - 200), 997):
            assert d[i : i + 200] not in joined
    # fine-tuning windows are exactly the windows of those documents
    w = train_windows(loaded.tokenizer, 32)
    torch.testing.assert_close(w, token_windows(loaded.tokenizer, docs, 32))


def test_bad_inputs(loaded: LoadedModel, strategy: Strategy, tmp_path: Path) -> None:
    other = strategy.with_(model_fingerprint="0" * 16)
    with pytest.raises(AmoebaError, match="strategy is for model"):
        finetune(loaded, other, CFG, tmp_path / "x")
    with pytest.raises(AmoebaError, match="only 9 shapes"):
        finetune(load_model("tiny"), strategy, FinetuneConfig(k=10), tmp_path / "y")
    with pytest.raises(AmoebaError, match="no checkpoint"):
        finetune(load_model("tiny"), strategy, CFG, tmp_path / "z", resume=True)
    with pytest.raises(AmoebaError, match="not a fine-tuning output"):
        load_adapted(load_model("tiny"), strategy, tmp_path / "missing")


def _cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from amoeba.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code), capsys.readouterr().err


def test_cli_errors_exit_2(strategy: Strategy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strategy.with_(model_fingerprint="0" * 16).save(tmp_path / "other.yaml")
    strategy.save(tmp_path / "s.yaml")
    base = ["finetune", "--model", "tiny", "--steps", "2", "--seq-len", "32"]
    rc, err = _cli(*base, "--strategy", str(tmp_path / "other.yaml"), "--out", str(tmp_path / "o"), capsys=capsys)
    assert rc == 2 and "error:" in err and "model" in err
    rc, err = _cli(*base, "--strategy", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--resume", capsys=capsys)
    assert rc == 2 and "no checkpoint" in err
    rc, err = _cli(*base, "--strategy", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--k", "50", capsys=capsys)
    assert rc == 2 and "K=50" in err
    rc, err = _cli(*base, "--strategy", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o"), capsys=capsys)
    assert rc == 2 and "does not exist" in err


def test_cli_kill_and_resume(strategy: Strategy, tmp_path: Path) -> None:
    strategy.save(tmp_path / "s.yaml")
    out = tmp_path / "run"

    def args(steps: int) -> list[str]:
        return [sys.executable, "-m", "amoeba.cli", "finetune", "--model", "tiny", "--strategy", str(tmp_path / "s.yaml"),
                "--steps", str(steps), "--seq-len", "32", "--checkpoint-every", "1", "--k", "3", "--threads", "1",
                "--out", str(out)]

    p = subprocess.Popen(args(400), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and not ((out / CHECKPOINT).exists() and steps_done(out) >= 2):
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = steps_done(out)
    assert 2 <= killed_at < 400
    r = subprocess.run([*args(killed_at + 2), "--resume"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert steps_done(out) == killed_at + 2
    assert "resuming at step" in r.stdout


def test_gradient_checkpointing_gives_the_same_adapters(strategy: Strategy, tmp_path: Path) -> None:
    plain = finetune(load_model("tiny"), strategy, CFG, tmp_path / "plain")
    ckpt_cfg = FinetuneConfig(**{**CFG.__dict__, "gradient_checkpointing": True})
    recomputed = finetune(load_model("tiny"), strategy, ckpt_cfg, tmp_path / "ckpt")
    a, b = adapter_state(plain), adapter_state(recomputed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_cli_device_and_memory_plan_refusals(strategy: Strategy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strategy.save(tmp_path / "s.yaml")
    base = ["finetune", "--model", "tiny", "--steps", "2", "--strategy", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]
    if not torch.cuda.is_available():
        rc, err = _cli(*base, "--device", "cuda", capsys=capsys)
        assert rc == 2 and err.startswith("error:") and "cuda" in err and len(err.strip().splitlines()) == 1
    # 10^5 windows of 10^5 tokens cannot fit: refused before loading, naming the terms in GiB
    rc, err = _cli(*base, "--device", "cpu", "--batch", "100000", "--seq-len", "100000", capsys=capsys)
    assert rc == 2 and "does not fit" in err and "activations" in err and "GiB" in err
    assert not (tmp_path / "o").exists()


def test_balancing_reference_is_the_running_mean_of_the_distilled_losses(strategy: Strategy, tmp_path: Path) -> None:
    import json

    with pytest.raises(AmoebaError, match="balance_to"):
        FinetuneConfig(balance_to="mean")
    finetune(load_model("tiny"), strategy, CFG, tmp_path / "a", stop_after=2)
    ck = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)
    logs = [json.loads(x)["losses"] for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    m = [sum(v for k, v in x.items() if k != "largest") / (len(x) - 1) for x in logs]
    assert ck["balance_ref"] == pytest.approx(0.9 * m[0] + 0.1 * m[1], rel=1e-9)
    # the reference changes what is learned: "largest" (the paper's) and "others" train different adapters
    a = adapter_state(finetune(load_model("tiny"), strategy, CFG, tmp_path / "o"))
    b = adapter_state(finetune(load_model("tiny"), strategy, FinetuneConfig(**{**CFG.__dict__, "balance_to": "largest"}),
                               tmp_path / "l"))
    assert any(not torch.allclose(a[k], b[k]) for k in a)
