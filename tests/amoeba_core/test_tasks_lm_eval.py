"""lm-eval-harness backend: a local multiple-choice task (YAML + JSONL written here, nothing
downloaded) through `amoeba eval --task`, checked against lm-eval's own run on the exported HF folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before datasets is imported: nothing may touch the network
os.environ["HF_HUB_OFFLINE"] = "1"

from amoeba.cli import main  # noqa: E402
from amoeba_core.errors import AmoebaError  # noqa: E402
from amoeba_core.export import export_subnet  # noqa: E402
from amoeba_core.model import LoadedModel  # noqa: E402
from amoeba_core.strategy import Strategy  # noqa: E402
from amoeba_core.tasks import TaskScore, compare_items, parse_results  # noqa: E402

TASK = "amoeba_local_continuation"


def write_local_task(folder: Path, n_items: int = 24) -> Path:
    """A 3-way multiple-choice task from shipped text: which continuation follows a passage of a
    pydoc topic (the right one, or the continuation of another topic's passage)."""
    from amoeba_core.data import documents

    docs = [t for _, t in documents("topics") if len(t) > 400][: n_items + 2]
    items = []
    for i in range(n_items):
        text = " ".join(docs[i].split())
        ctx, cont = text[100:220], text[220:260]
        wrong = [" ".join(docs[(i + k) % len(docs)].split())[220:260] for k in (1, 2)]
        answer = i % 3
        choices = wrong[:answer] + [cont] + wrong[answer:]
        items.append({"context": ctx, "choices": choices, "answer": answer})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("\n".join(json.dumps(x) for x in items) + "\n")
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {folder / 'items.jsonl'}\n"
        f"  cache_dir: {folder / 'hf-datasets-cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return int(e.value.code or 0)


def lm_eval_on_folder(folder: Path, tasks_dir: Path, limit: int) -> dict[str, float]:
    """lm-eval's own run on an exported HF folder (its `--model hf` path)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    r = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(folder), "device": "cpu"}, tasks=[TASK],
                                task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False), limit=limit, batch_size=1,
                                bootstrap_iters=0)
    res = r["results"][TASK]
    return {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"]}


def check_against_lm_eval(loaded: LoadedModel, strategy: Strategy, shape_text: str, tmp_path: Path, limit: int,
                          capsys: pytest.CaptureFixture[str]) -> dict:
    pytest.importorskip("lm_eval")
    tasks_dir = write_local_task(tmp_path / "tasks")
    spath = strategy.save(tmp_path / "strategy.yaml")
    out = tmp_path / "eval.json"
    argv = ["eval", "--strategy", str(spath), "--shape", shape_text, "--task", TASK, "--include-path", str(tasks_dir),
            "--limit", str(limit), "--offline", "--out", str(out)]
    assert _run(argv) == 0
    printed = capsys.readouterr().out
    assert f"{TASK} acc:" in printed and "90% bootstrap over" in printed and "lm-eval stderr" in printed
    ours = {r["metric"]: r for r in json.loads(out.read_text())["scores"]}
    folder = export_subnet(loaded, strategy, strategy.resolve(shape_text), tmp_path / "hf", "hf")
    theirs = lm_eval_on_folder(folder, tasks_dir, limit)
    for metric in ("acc", "acc_norm"):
        assert ours[metric]["n"] == limit
        assert ours[metric]["value"] == pytest.approx(theirs[metric], abs=1e-12), metric
        lo, hi = ours[metric]["ci90"]
        assert lo <= ours[metric]["value"] <= hi
    return ours


def test_eval_task_equals_lm_eval_on_exported_folder(tiny: LoadedModel, bias_strategy: Strategy, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    check_against_lm_eval(tiny, bias_strategy, "d3-w0.75", tmp_path, 12, capsys)


def test_eval_task_errors(bias_strategy: Strategy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lm_eval")
    tasks_dir = write_local_task(tmp_path / "tasks", 3)
    spath = bias_strategy.save(tmp_path / "strategy.yaml")
    base = ["eval", "--strategy", str(spath), "--shape", "d3-w0.75", "--offline"]
    for extra, msg in ((["--task", "no_such_task_xyz", "--include-path", str(tasks_dir)], "unknown lm-eval task"),
                       (["--task", TASK, "--include-path", str(tmp_path / "missing")], "not a folder"),
                       (["--task", " , "], "no task given"),
                       (["--task", TASK, "--include-path", str(tasks_dir), "--limit", "0"], "--limit")):
        assert _run(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and msg in err, err


def _row(values: list[float], ids: list[str], metric: str = "acc") -> TaskScore:
    from amoeba_core.stats import mean_ci

    return TaskScore("t", metric, "none", sum(values) / len(values), None, mean_ci(values), tuple(values), tuple(ids),
                     len(values))


def test_parse_results_items_and_groups() -> None:
    samples = {"a": [{"doc_id": i, "filter": "none", "acc": float(i % 2)} for i in range(6)],
               "b": [{"doc_id": i, "filter": "none", "acc": 1.0} for i in range(2)]}
    out = {"results": {"grp": {"alias": "grp", "acc,none": 5 / 8, "acc_stderr,none": "N/A"},
                       "grp_macro": {"acc,none": 0.75, "acc_stderr,none": 0.1},
                       "a": {"alias": "a", "acc,none": 0.5, "acc_stderr,none": 0.2236, "sample_len": 6},
                       "b": {"acc,none": 1.0, "acc_stderr,none": 0.0}},
           "group_subtasks": {"grp": ["a", "b"], "grp_macro": ["a", "b"]}, "samples": samples}
    rows = {r.task: r for r in parse_results(out)}
    assert rows["a"].interval is not None and rows["a"].n == 6 and rows["a"].lm_eval_stderr == 0.2236
    assert rows["a"].doc_ids[0] == "a/0" and rows["a"].lm_eval_ci[0] < 0.5 < rows["a"].lm_eval_ci[1]
    assert rows["grp"].interval is not None and rows["grp"].n == 8 and rows["grp"].lm_eval_stderr is None
    assert rows["grp_macro"].interval is None and rows["grp_macro"].per_item == ()  # weighted: not an item mean


def test_compare_items_pairs_the_same_items() -> None:
    ids = [f"t/{i}" for i in range(40)]
    a = _row([1.0] * 30 + [0.0] * 10, ids)
    b = _row([1.0] * 10 + [0.0] * 30, ids)
    d = compare_items(a, b)
    assert d.significant and d.diff.value == pytest.approx(0.5)
    assert not compare_items(a, a).significant
    with pytest.raises(AmoebaError, match="same items"):
        compare_items(a, _row([1.0] * 40, [f"t/{i + 1}" for i in range(40)]))


@pytest.mark.slow
def test_smollm2_task_equals_lm_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same check on the real SmolLM2-135M (a narrowed, shallower subnet), on 6 items."""
    from amoeba_core.model import load_model
    from amoeba_core.width import apply_metric

    try:
        smol = load_model("smollm2-135m")
    except AmoebaError as e:
        pytest.skip(str(e))
    base = Strategy.trivial(smol.geometry, smol.fingerprint, smol.source, (1.0, 0.875))
    strategy = apply_metric(base, smol, None, "magnitude")
    ours = check_against_lm_eval(smol, strategy, "d28-w0.875", tmp_path, 6, capsys)
    assert 0.0 <= ours["acc"]["value"] <= 1.0
