"""Real clients of torch.optim, run the way their users run them: Lightning (every first-order
optimizer with a scheduler, LBFGS through Lightning's closure), the Hugging Face ``Trainer`` with
``optimizers=(opt, sched)`` on a tiny model built from a config, ``torch.compile`` of a training
step and ``GradScaler`` with autocast. Each resume from a client's own checkpoint continues
bit-identically to an uninterrupted run."""

from __future__ import annotations

import logging

import pytest
import torch
from resume_helper import ONE_PER_ALGORITHM
from test_drop_in import ALL
from torch import nn

from deepdescent import optim

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")
L = pytest.importorskip("lightning.pytorch")
transformers = pytest.importorskip("transformers")


def _digits() -> torch.utils.data.TensorDataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.utils.data.TensorDataset(torch.tensor(x[:192] / 16, dtype=torch.float32), torch.tensor(y[:192]))


class DigitsModule(L.LightningModule):
    def __init__(self, make, seed: int, scheduler: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
        self.make, self.scheduler = make, scheduler

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = self.make(self.parameters())
        if not self.scheduler:
            return opt
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)}

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_digits(), batch_size=64)  # 3 steps per epoch, in order


def _fit(make, folder, epochs: int, ckpt_path=None, seed: int = 0, scheduler: bool = True) -> list[torch.Tensor]:
    module = DigitsModule(make, seed, scheduler)
    saver = L.callbacks.ModelCheckpoint(dirpath=folder, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[saver],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, ckpt_path=ckpt_path)
    return [p.detach().clone() for p in module.parameters()]


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


LIGHTNING = {**ALL, "L-BFGS": lambda p: optim.LBFGS(p, history=5, max_iter=2),
             "BFGS": lambda p: optim.BFGS(p, max_iter=2), "CG": lambda p: optim.ConjugateGradient(p, max_iter=2)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LIGHTNING))
def test_lightning_resume_from_a_checkpoint_is_bit_identical(name, tmp_path):
    """Lightning always steps with a closure (Nesterov's interim point, the second-order methods'
    evaluations); the scheduler steps per epoch; resume at epoch 2 of 4 with ``ckpt_path``."""
    make, scheduler = LIGHTNING[name], name in ALL
    straight = _fit(make, tmp_path / "a", epochs=4, scheduler=scheduler)
    resumed = _fit(make, tmp_path / "b", epochs=4, ckpt_path=tmp_path / "a" / "epoch=1.ckpt", seed=7,
                   scheduler=scheduler)
    start = DigitsModule(make, 0).parameters()
    assert any(not torch.equal(a, b) for a, b in zip(straight, start)), "training changed nothing"
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b), name


class _Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 40, (12,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


def _hf_train(make, folder, resume=None, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=40, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)  # randomly initialised from the config: nothing downloaded
    opt = make(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + 0.2 * k))
    args = transformers.TrainingArguments(
        output_dir=str(folder), max_steps=6, save_steps=3, per_device_train_batch_size=4, report_to=[],
        use_cpu=True, seed=0, logging_steps=100, disable_tqdm=True, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(), optimizers=(opt, sched))
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ONE_PER_ALGORITHM))
def test_hugging_face_trainer_resume_is_bit_identical(name, tmp_path):
    """Trainer steps without a closure (Nesterov keeps θ̃ in the parameters), clips gradients,
    saves optimizer.pt and scheduler.pt; resume from checkpoint-3 of 6 steps."""
    straight = _hf_train(ALL[name], tmp_path)
    resumed = _hf_train(ALL[name], tmp_path, resume=tmp_path / "checkpoint-3", seed=5)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b), name


def _step_fn(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


@pytest.mark.slow
@pytest.mark.parametrize("name", ["momentum", "adam", "rmsprop-nesterov"])
def test_a_compiled_training_step_follows_the_eager_iterates(name):
    """``torch.compile`` of a whole training step (forward, backward, optimizer step): the step is
    a graph break, run eagerly, and the iterates are those of the uncompiled loop."""
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
        step = _step_fn(model, ALL[name](model.parameters()))
        step = torch.compile(step, backend="eager") if compiled else step
        for k in range(5):
            gen = torch.Generator().manual_seed(k)
            step(torch.randn(16, 6, generator=gen), torch.randn(16, 2, generator=gen))
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(ALL))
def test_grad_scaler_with_autocast_skips_overflow_and_unscales(name):
    """``GradScaler`` + bfloat16 autocast: the scaler unscales before the step (the iterates equal
    an unscaled loop's), and a step whose scaled gradient overflows is skipped by the scaler."""
    runs = []
    for scaled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
        opt = ALL[name](model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=scaled)
        for k in range(4):
            gen = torch.Generator().manual_seed(k)
            x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 2, generator=gen)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(model(x), y)
            if scaled and k == 2:
                loss = loss * float("inf")  # an overflow: the scaler must skip this step
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        runs.append(([p.detach().clone() for p in model.parameters()], scaler.get_scale() if scaled else None))
    (plain, _), (with_scaler, scale) = runs
    assert scale == 2.0 ** 9  # halved once, at the overflow
    reference = _replay_without(name, skip=2)
    for a, b in zip(with_scaler, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _replay_without(name: str, skip: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = ALL[name](model.parameters())
    for k in range(4):
        gen = torch.Generator().manual_seed(k)
        x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 2, generator=gen)
        if k == skip:
            continue
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _monitored_records(path) -> list[dict]:
    """A Monitor's JSONL without what depends on the clock (times, costs, the overhead records)."""
    from deepdescent.diagnostics import read_jsonl

    return [{k: v for k, v in r.items() if k not in ("time", "seconds")} for r in read_jsonl(path)
            if r["instrument"] != "monitor"]


#: every due measurement runs (no budget in the way): the same records in any two runs of one loop
MONITOR = {"budget": 1e9, "every": {"cheap": 1, "ill_conditioning": 1, "curvature": 2, "gradient_noise": 2}}


def test_the_lightning_callback_logs_what_a_plain_loop_logs(tmp_path):
    """One line in ``Trainer(callbacks=...)``: the JSONL equals that of a Monitor in a plain loop
    over the same batches, seed and optimizer, and the trainer's logger receives the scalars."""
    from deepdescent.diagnostics.lightning import MonitorCallback

    make = lambda p: optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
    module = DigitsModule(make, seed=0)
    callback = MonitorCallback(nn.functional.cross_entropy, model=lambda m: m.net, log=tmp_path / "lightning.jsonl",
                               **MONITOR)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[callback],
                        logger=L.loggers.CSVLogger(tmp_path, name="csv"), enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False)
    trainer.fit(module)

    plain = DigitsModule(make, seed=0)
    opt, sched = make(plain.parameters()), None
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    from deepdescent import diagnostics as dg

    monitor = dg.Monitor(plain.net, nn.functional.cross_entropy, opt, log=tmp_path / "plain.jsonl", **MONITOR)
    for _ in range(2):
        for x, y in plain.train_dataloader():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(plain.net(x), y)
            loss.backward()
            monitor.step(x, y, loss)
            opt.step()
        sched.step()
    monitor.close()
    ours = _monitored_records(tmp_path / "lightning.jsonl")
    assert ours == _monitored_records(tmp_path / "plain.jsonl")
    assert {r["instrument"] for r in ours} == {"cheap", "ill_conditioning", "curvature", "gradient_noise"}
    assert len([r for r in ours if r["instrument"] == "cheap"]) == 5  # steps 1…5 (step 0 has no step time yet)
    logged = next(tmp_path.glob("csv/*/metrics.csv")).read_text()
    assert "curvature/lambda_max" in logged and "cheap/grad_norm" in logged


def test_the_hugging_face_callback_logs_what_a_plain_loop_logs(tmp_path):
    """One line in ``Trainer(callbacks=...)``: the model's own loss on each step's batch; the JSONL
    matches a Monitor in a plain loop over the Trainer's batches, and TensorBoard gets the scalars."""
    pytest.importorskip("tensorboard")
    from deepdescent import diagnostics as dg
    from deepdescent.diagnostics.huggingface import MonitorCallback, OwnLoss, _the_loss

    def model_and_opt():
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=40, n_positions=16,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(config)
        return model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    model, opt = model_and_opt()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8, report_to=["tensorboard"],
        use_cpu=True, seed=0, logging_steps=100, disable_tqdm=True,
        dataloader_num_workers=0, max_grad_norm=0, save_strategy="no")
    every = {"cheap": 1, "ill_conditioning": 1, "curvature": 2}
    constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)  # (None: the Trainer's linear decay)
    callback = MonitorCallback(log=tmp_path / "hf.jsonl", budget=1e9, every=every)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(), optimizers=(opt, constant),
                                   callbacks=[callback])
    batches = []  # what the Trainer feeds (not the Monitor's own passes)
    model.register_forward_pre_hook(lambda m, a, kw: batches.append(dict(kw)) if not callback._measuring else None,
                                    with_kwargs=True)
    trainer.train()

    plain, opt = model_and_opt()
    plain.train()
    monitor = dg.Monitor(OwnLoss(plain), _the_loss, opt, log=tmp_path / "plain.jsonl", budget=1e9, every=every,
                         instruments=[dg.Cheap(), dg.IllConditioning(), dg.Curvature()])
    assert len(batches) == 4
    torch.manual_seed(0)
    for batch in batches:
        opt.zero_grad()
        loss = plain(**batch).loss
        loss.backward()
        monitor.step(batch, None, loss)
        opt.step()
    monitor.close()
    ours, theirs = _monitored_records(tmp_path / "hf.jsonl"), _monitored_records(tmp_path / "plain.jsonl")
    assert [(r["step"], r["instrument"]) for r in ours] == [(r["step"], r["instrument"]) for r in theirs]
    assert len(ours) == 3 + 4 + 2  # cheap at steps 1…3, ill-conditioning at each, curvature at 0 (warm-up) and 2
    for a, b in zip(ours, theirs):
        for key, value in a["values"].items():
            if isinstance(value, float):
                assert value == pytest.approx(b["values"][key], rel=1e-5, abs=1e-7), (a["instrument"], key)
    assert list((tmp_path / "out" / "runs" / "deepdescent").glob("events.out.tfevents.*"))


def test_the_lightning_callback_measures_once_per_step_with_a_closure_optimizer():
    """L-BFGS evaluates its closure several times in one step (Lightning's hook fires at each):
    the Monitor still sees one step per batch, at the step's θ."""
    from deepdescent.diagnostics.lightning import MonitorCallback

    module = DigitsModule(lambda p: optim.LBFGS(p, history=5, max_iter=3), seed=0, scheduler=False)
    callback = MonitorCallback(nn.functional.cross_entropy, model=lambda m: m.net, budget=1e9, every={"cheap": 1})
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module)
    assert callback.monitor.steps == 3  # 192 examples in batches of 64
