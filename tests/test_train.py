"""Training pieces: the learning-rate schedule, the budget, early stopping, separate vocabularies."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import nmt.train
from nmt.checkpoint import load_model, saved_decode
from nmt.config import TrainConfig, config_from_dict, load_run_config
from nmt.ensemble import averaged
from nmt.errors import NMTError
from nmt.train import train
from nmt.trainer import Progress, budget_used, learning_rate, moving_average, over_budget

from conftest import tiny_model, toy_corpus


def test_learning_rate_schedule():
    warm = TrainConfig(lr=1e-3, warmup_steps=100, lr_decay="none", min_lr=1e-5)
    assert learning_rate(1, warm, 1.0) == pytest.approx(1e-5)
    assert learning_rate(50, warm, 1.0) == pytest.approx(5e-4)
    assert learning_rate(100, warm, 1.0) == learning_rate(5000, warm, 1.0) == pytest.approx(1e-3)
    assert learning_rate(5000, warm, 0.25) == pytest.approx(2.5e-4)  # plateau cuts
    assert learning_rate(5000, warm, 1e-6) == pytest.approx(1e-5)  # never below min_lr after warm-up
    inv = TrainConfig(lr=1e-3, warmup_steps=100, lr_decay="inverse_sqrt", min_lr=0.0)
    assert learning_rate(400, inv, 1.0) == pytest.approx(5e-4)  # sqrt(100 / 400)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_decay_over_the_budget(decay):
    t = TrainConfig(lr=1e-3, warmup_steps=0, lr_decay=decay, min_lr=1e-5, max_steps=1000, time_budget_min=10)
    rates = [learning_rate(s, t, 1.0, budget_used(t, s, 0.0)) for s in range(0, 1001, 50)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(
        1e-5
    )  # full at the start, floor at the end
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert learning_rate(500, t, 1.0, 0.5) == pytest.approx(5e-4)  # half way: both shapes are at half
    # the budget that binds: steps or the clock, whichever is further along
    assert budget_used(t, 100, 300.0) == pytest.approx(0.5) and budget_used(t, 800, 300.0) == pytest.approx(
        0.8
    )
    assert budget_used(t, 2000, 0.0) == 1.0
    late = dataclasses.replace(t, decay_start=0.8)  # constant for 80% of the budget, then the decay
    assert learning_rate(700, late, 1.0, 0.7) == learning_rate(800, late, 1.0, 0.8) == pytest.approx(1e-3)
    assert learning_rate(900, late, 1.0, 0.9) == pytest.approx(5e-4)
    assert learning_rate(1000, late, 1.0, 1.0) == pytest.approx(1e-5)
    with pytest.raises(
        NMTError,
        match="x: train.lr_decay is .*, which decays over the budget: it needs train.max_steps or",
    ):
        config_from_dict({"train": {"lr_decay": decay, "time_budget_min": 0}}, "x")


def toy_config(tmp_path, **sections):
    folder = tmp_path / "toy"
    doc = {
        "data": {
            "train": toy_corpus(folder, "train", 300, 1),
            "valid": toy_corpus(folder, "valid", 20, 2),
            "test": [],
            "vocab_size": 50,
            "cache_dir": str(tmp_path / "cache"),
            "sampling_alpha": 0.0,
        },
        # The regularisers and the average of the defaults off: each test turns on what it is about.
        "model": {"emb_size": 16, "enc_hidden": 16, "dec_hidden": 16, "word_dropout": 0.0},
        "train": {
            "run_dir": str(tmp_path / "run"),
            "average_last": 0,
            "batch_tokens": 300,
            "log_every": 5,
            "time_budget_min": 5,
        },
        "decode": {},
    }
    for section, values in sections.items():
        doc[section].update(values)
    return config_from_dict(doc, "toy")


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def checkpoint(tmp_path, name: str) -> dict:
    """The checkpoint of the toy run `name` (a toy_config under tmp_path / name)."""
    return torch.load(tmp_path / name / "run" / "checkpoint.pt", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_early_stopping_after_patience_and_keep_last(tmp_path):
    # A learning rate this small cannot improve validation BLEU: training stops after 1 + patience
    # validations.
    cfg = toy_config(
        tmp_path,
        train={"lr": 1e-9, "min_lr": 0.0, "valid_every": 2, "patience": 2, "max_steps": 100, "keep_last": 2},
    )
    train(cfg)
    valid = [r for r in records(tmp_path) if r["type"] == "valid"]
    assert len(valid) == 3 and [r["best"] for r in valid] == [True, False, False]
    assert next(r for r in records(tmp_path) if r["type"] == "done")["step"] == 6
    # keep_last: the models of the last two validations, for `nmt average`.
    assert sorted(p.name for p in (tmp_path / "run").glob("step-*")) == [
        "step-4.safetensors",
        "step-6.safetensors",
    ]


def test_average_of_the_last_validations(tmp_path):
    train_cfg = {"lr": 3e-3, "valid_every": 3, "max_steps": 12, "average_last": 3}
    cfg = toy_config(tmp_path, train=train_cfg, decode={"length_penalty": 1.5})
    train(cfg)
    run, logged = tmp_path / "run", records(tmp_path)
    valid = [r for r in logged if r["type"] == "valid"]
    average = next(r for r in logged if r["type"] == "average")
    assert average["steps"] == [r["step"] for r in valid[-3:]] == [6, 9, 12]
    assert sorted(p.name for p in run.glob("step-*")) == [f"step-{s}.safetensors" for s in (12, 6, 9)]
    # The best model is whichever validated best, the average included; the test sets are scored with it.
    done = next(r for r in logged if r["type"] == "done")
    assert done["best_valid_bleu"] == max([r["valid_bleu"] for r in valid] + [average["valid_bleu"]])
    best, _, info = load_model(run / "best.safetensors")
    if average["best"]:
        mean, _ = averaged([run / f"step-{s}.safetensors" for s in (6, 9, 12)])
        assert info["averaged_steps"] == [6, 9, 12] and info["valid_bleu"] == average["valid_bleu"]
        assert all(torch.equal(a, b) for a, b in zip(best.state_dict().values(), mean.state_dict().values()))
    else:
        assert average["valid_bleu"] <= done["best_valid_bleu"] and "averaged_steps" not in info
    # Every model file of the run carries the config's decoding settings (not the defaults: length penalty
    # 1.5), the defaults of translating with it.
    assert cfg.decode.length_penalty == 1.5
    assert all(saved_decode(path) == cfg.decode for path in run.glob("*.safetensors"))


def test_a_fresh_run_starts_clean_or_not_at_all(tmp_path):
    """A fresh run into a directory that holds a run is refused and the run is left as it was; with
    `overwrite` that run's files go first, so the metrics, the snapshots averaged and the model are the new
    run's alone (a shorter run would otherwise average the old run's later snapshots). Other files stay."""
    cfg = toy_config(tmp_path, train={"lr": 3e-3, "valid_every": 3, "max_steps": 12, "average_last": 3})
    train(cfg)
    run = tmp_path / "run"
    (run / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(NMTError, match="run: holds a previous run; continue it with --resume, start afresh"):
        train(cfg)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before

    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=6)), overwrite=True)
    logged = records(tmp_path)
    assert [r["step"] for r in logged if r["type"] == "train"] == [5]  # log_every 5: nothing of the first run
    assert sum(r["type"] == "done" for r in logged) == 1
    assert next(r for r in logged if r["type"] == "average")["steps"] == [3, 6]
    assert sorted(p.name for p in run.glob("step-*")) == ["step-3.safetensors", "step-6.safetensors"]
    assert (run / "notes.txt").read_text() == "mine"


def test_over_budget():
    t = TrainConfig(max_steps=0, max_epochs=0, time_budget_min=1.0)
    assert not over_budget(t, Progress(step=10**6, epoch=10**3), seconds=40.0, longest_validation=19.9)
    assert over_budget(
        t, Progress(), seconds=40.0, longest_validation=20.0
    )  # the last validation must fit too
    assert over_budget(t, Progress(), seconds=60.0, longest_validation=0.0)
    assert not over_budget(
        TrainConfig(time_budget_min=0, max_steps=0, max_epochs=0), Progress(), 10**9, 10**9
    )
    steps = TrainConfig(max_steps=5, time_budget_min=0)
    assert not over_budget(steps, Progress(step=4), 0, 0) and over_budget(steps, Progress(step=5), 0, 0)
    epochs = TrainConfig(max_epochs=2, time_budget_min=0)
    assert not over_budget(epochs, Progress(epoch=1), 0, 0) and over_budget(epochs, Progress(epoch=2), 0, 0)


def stopped_by_the_budget(records: list[dict], budget: float) -> None:
    """The run ended inside the budget, up to what the machine's own speed could not foresee: one step past
    the last decision (the longest step between progress lines, which come every step here) and a final
    validation longer than the longest before it, the forecast (measured in this run, so no figure depends on
    the machine)."""
    done = next(r for r in records if r["type"] == "done")
    minutes = [0.0] + [r["minutes"] for r in records if r["type"] == "train"]
    # minutes, rounded to 0.01; no step at all on a machine so loaded that preparing the data spent the budget
    longest_step = max((b - a for a, b in zip(minutes, minutes[1:])), default=0.0) + 0.01
    *earlier, last = done["validation_seconds"]
    surprise = max(0.0, last - max(earlier, default=0.0)) / 60
    assert done["minutes"] <= budget + longest_step + surprise + 0.01


def test_separate_vocabularies_and_time_budget(tmp_path):
    budget = 0.05  # minutes
    cfg = toy_config(
        tmp_path,
        data={"joint_vocab": False},
        train={"time_budget_min": budget, "valid_every": 10_000, "log_every": 1},
    )
    train(cfg)
    run = tmp_path / "run"
    assert (
        (run / "spm.src.model").is_file()
        and (run / "spm.tgt.model").is_file()
        and not (run / "spm.model").exists()
    )
    assert (run / "spm.src.model").read_bytes() != (run / "spm.tgt.model").read_bytes()
    done = next(r for r in records(tmp_path) if r["type"] == "done")
    assert (
        done["step"] < 10_000 and len(done["validation_seconds"]) == 1
    )  # the budget stopped it, then validated
    stopped_by_the_budget(records(tmp_path), budget)


def test_time_budget_includes_the_final_validation(tmp_path):
    budget = 0.2  # minutes
    cfg = toy_config(
        tmp_path, train={"time_budget_min": budget, "valid_every": 10, "patience": 0, "log_every": 1}
    )
    train(cfg)
    done = next(r for r in records(tmp_path) if r["type"] == "done")
    assert len(done["validation_seconds"]) >= 2  # it validated on the way, so the last one was forecast
    stopped_by_the_budget(records(tmp_path), budget)


def flushing() -> bool:
    """Whether torch flushes denormal floats to zero now: 1e-39 is below float32's smallest normal number."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


def test_training_flushes_denormals_and_then_stops(tmp_path, monkeypatch):
    if not torch.set_flush_denormal(False):  # torch flushes on x86 with SSE3 and on AArch64 only
        pytest.skip("this CPU has no flushing of denormal floats")
    seen = []
    loop = nmt.train.trained

    def watched(trainer):
        seen.append(flushing())
        return loop(trainer)

    monkeypatch.setattr(nmt.train, "trained", watched)
    assert not flushing()
    train(toy_config(tmp_path, train={"max_steps": 2, "valid_every": 2}))
    assert seen == [True] and not flushing()


def test_tensorboard_event_files_hold_the_metrics(tmp_path):
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = toy_config(
        tmp_path, train={"tensorboard": True, "max_steps": 10, "valid_every": 5, "log_every": 2, "threads": 1}
    )
    threads = torch.get_num_threads()
    train(cfg)
    assert torch.get_num_threads() == threads  # train.threads applies to the run only
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = records(tmp_path)
    for kind, key in (("train", "loss"), ("train", "lr"), ("valid", "valid_bleu"), ("valid", "valid_loss")):
        scalars = [(e.step, e.value) for e in events.Scalars(f"{kind}/{key}")]
        expected = [(r["step"], r[key]) for r in logged if r["type"] == kind]
        assert [s for s, _ in scalars] == [s for s, _ in expected] and len(expected) >= 2
        assert [v for _, v in scalars] == pytest.approx([v for _, v in expected], rel=1e-6)


@pytest.mark.parametrize(
    "regulariser",
    [{"data": {"sampling_alpha": 0.2}}, {"train": {"rdrop_alpha": 5.0}}, {"model": {"word_dropout": 0.2}}],
    ids=["subword-sampling", "r-drop", "word-dropout"],
)
def test_regularisers_train_and_resume_exactly(tmp_path, regulariser):
    """Subword sampling's segmentations come from the seed and the epoch (in new processes too:
    tests/test_distributed.py), R-Drop's two dropout masks and word dropout's words from torch's generator: a
    run stopped and resumed ends with the weights of the same run straight through."""
    settings = {"max_steps": 16, "valid_every": 8, "time_budget_min": 0, "threads": 1}

    def config(name: str, max_steps: int = 16, sections: dict = regulariser):
        steps = settings | sections.get("train", {}) | {"max_steps": max_steps}
        return toy_config(tmp_path / name, **(sections | {"train": steps}))

    train(config("a"))
    halves = config("b", max_steps=8)
    train(halves)
    train(dataclasses.replace(halves, train=dataclasses.replace(halves.train, max_steps=16)), resume=True)
    a, b = checkpoint(tmp_path, "a"), checkpoint(tmp_path, "b")
    assert a["progress"]["step"] == b["progress"]["step"] == 16
    assert same_weights(a, b)
    # and the regulariser changed what was learnt: the same run without it ends elsewhere
    train(config("c", sections={}))
    assert not same_weights(a, checkpoint(tmp_path, "c"))


def test_resume_keeps_the_precision_the_run_started_in(tmp_path):
    """`auto` picks a precision for the machine; a run resumed with it goes on in the precision it recorded
    (bf16 here, which `auto` gives only on a CPU with AMX), so it ends with the weights of the same run
    straight through."""

    def config(name: str, max_steps: int, precision: str = "bf16"):
        steps = {"max_steps": max_steps, "valid_every": 8, "time_budget_min": 0, "threads": 1}
        return toy_config(tmp_path / name, train=steps | {"precision": precision})

    train(config("a", 16))
    train(config("b", 8))
    train(config("b", 16, precision="auto"), resume=True)
    a, b = checkpoint(tmp_path, "a"), checkpoint(tmp_path, "b")
    assert a["progress"]["step"] == b["progress"]["step"] == 16
    assert same_weights(a, b)
    assert load_run_config(tmp_path / "b" / "run" / "config.yaml").train.precision == "bf16"


def test_resume_takes_the_optimizer_settings_of_the_config(tmp_path):
    """A run resumed with another `weight_decay` and Adam betas goes on with the config's (the biases still
    undecayed), not the ones its checkpoint's optimizer state holds, and records them."""

    def config(max_steps: int, weight_decay: float, beta2: float):
        steps = {"max_steps": max_steps, "valid_every": 4, "time_budget_min": 0, "threads": 1}
        optimizer = {"weight_decay": weight_decay, "adam_beta1": 0.8, "adam_beta2": beta2}
        return toy_config(tmp_path / "a", train=steps | optimizer)

    train(config(4, 0.1, 0.99))
    groups = checkpoint(tmp_path, "a")["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [tuple(g["betas"]) for g in groups] == [(0.8, 0.99)] * 2
    train(config(8, 0.05, 0.98), resume=True)
    state = checkpoint(tmp_path, "a")
    assert state["progress"]["step"] == 8
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert [tuple(g["betas"]) for g in groups] == [(0.8, 0.98)] * 2
    recorded = load_run_config(tmp_path / "a" / "run" / "config.yaml").train
    assert (recorded.weight_decay, recorded.adam_beta2) == (0.05, 0.98)


def test_moving_average_decay_warms_up_to_its_value():
    """After n updates the decay is min(d, (1 + n) / (10 + n)): a short run averages its recent weights, a
    long one (here from n = 35 on) the given decay's."""
    d, model = 0.8, tiny_model()
    ema, expected = moving_average(model, d), None
    generator = torch.Generator().manual_seed(0)
    for n in range(60):
        with torch.no_grad():
            for w in model.parameters():
                w.add_(torch.randn(w.shape, generator=generator))
        weights = [w.detach().clone() for w in model.parameters()]
        ema.update_parameters(model)
        decay = min(d, (1 + n) / (10 + n))
        expected = weights if n == 0 else [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]
    assert all(torch.allclose(a, e, atol=1e-5) for a, e in zip(ema.module.parameters(), expected))


def test_moving_average_is_validated_kept_and_resumed_exactly(tmp_path):
    """With `ema_decay` d the weights validated and kept are ema = d_n * ema + (1 - d_n) * weights after
    every step, d_n = min(d, (1 + n) / (10 + n)) after n steps (the first step's weights to start), training
    goes on from the weights themselves, and a run stopped and resumed ends with the average of the same
    run straight through."""
    d = 0.75
    settings = {"lr": 3e-3, "valid_every": 1, "keep_last": 1, "ema_decay": d, "time_budget_min": 0}

    def config(name: str, max_steps: int):
        return toy_config(tmp_path / name, train=settings | {"threads": 1, "max_steps": max_steps})

    def averaged_weights(state: dict) -> dict[str, torch.Tensor]:
        return {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}

    train(config("b", max_steps=1))
    one = checkpoint(tmp_path, "b")
    assert all(torch.equal(averaged_weights(one)[k], w) for k, w in one["model"].items())  # a copy at first
    train(config("b", max_steps=2), resume=True)
    train(config("a", max_steps=2))
    a, b = checkpoint(tmp_path, "a"), checkpoint(tmp_path, "b")
    assert same_weights(a, b)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"]) and int(a["ema"]["n_averaged"]) == 2
    ema, d_1 = averaged_weights(a), min(d, 2 / 11)  # the decay of the second update
    for name, w in a["model"].items():
        if w.is_floating_point():
            assert torch.allclose(ema[name], d_1 * one["model"][name] + (1 - d_1) * w, atol=1e-6)
    assert not all(torch.equal(ema[k], w) for k, w in a["model"].items())
    kept, _, info = load_model(tmp_path / "a" / "run" / "step-2.safetensors")
    assert info["step"] == 2 and all(torch.equal(ema[k], w) for k, w in kept.state_dict().items())
