"""The science suite (``bench --suite science``): every reported number comes from the stored runs,
the report is rebuilt from them, the command resumes and fails clearly; and the pieces it added to
the library (HF's curvature minibatch, DeepOBS's exact quadratic)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deepdescent import optim
from deepdescent.cli import app
from deepdescent.lab import problems, science
from deepdescent.lab.science import report as science_report
from deepdescent.lab.science.experiment import VERDICTS, Paired, judged

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Every experiment at the tiny scale, stored under one run directory (about 10 s)."""
    out = tmp_path_factory.mktemp("science")
    return out, science.run_suite(out, "tiny")


def _set(raw, path, value):
    node = raw
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


# For each experiment: a change to its raw records and the number of its summary that must follow it.
def _autoencoder(raw):
    for r in [raw["runs"]["HF"][0], *raw["other_seeds"]["HF"]]:
        r["final"] = 0.00123
    return "HF_error", 0.00123


def _depth(raw):
    for runs in raw["runs"]["orthogonal"].values():
        for r in runs:
            r["epochs"] = 7
    return f"orthogonal_{raw['depths'][-1]}", 7


def _clipping(raw):
    for seeds in raw["runs"]["cliff"]["clipped"].values():
        seeds[:] = [0.0] * len(seeds)
    return "cliff_clipped_success", 1.0


def _saddles(raw):
    raw["runs"]["saddle"]["Newton (Alg. 8.8)"]["lambda_min"] = -7.5
    return "saddle/Newton (Alg. 8.8)/lambda_min", -7.5


def _gradient_norm(raw):
    raw["records"]["error"][-1] = 0.0321
    return "error_last", 0.0321


def _interpolation(raw):
    path = raw["paths"]["digits_mlp"]["loss"]
    path[len(path) // 2] = path[0] + 1.0
    drop = path[0] - path[-1]
    return "digits_mlp_bump", (path[0] + 1.0 - path[len(path) // 2 - 1]) / drop


def _deepobs(raw):
    for seeds in raw["runs"]["Adam"].values():
        for r in seeds:
            r["test"] = 50.0
    raw["runs"]["Adam"]["-2.6"][0]["test"] = 1.0
    return "Adam_lr", 10**-2.6


def _momentum(raw):
    for r in [*raw["runs"]["NAG μ_max = 0.999"], *raw["other_seeds"]["NAG μ_max = 0.999"]]:
        r["final"] = 0.0042
    return "NAG μ_max = 0.999", 0.0042


def _kfac(raw):
    for r in [*raw["runs"]["K-FAC"], *raw["other_seeds"]["K-FAC"]]:
        r["final"] = 0.00123
    return "K-FAC_error", 0.00123


CHANGES = {"autoencoder": _autoencoder, "kfac": _kfac, "depth": _depth, "clipping": _clipping, "saddles": _saddles,
           "gradient_norm": _gradient_norm, "interpolation": _interpolation, "deepobs": _deepobs,
           "momentum_schedule": _momentum}


def test_every_experiment_has_a_change_check():
    assert set(CHANGES) == set(science.EXPERIMENTS)


@pytest.mark.parametrize("key", list(CHANGES))
def test_each_number_follows_the_runs(tiny, key):
    """No constant in the report: change the stored records and the summary's number (and the text
    shown) changes with them."""
    _, records = tiny
    raw = copy.deepcopy(records[key]["raw"])
    before = science.EXPERIMENTS[key].summarize(raw)
    name, expected = CHANGES[key](raw)
    after = science.EXPERIMENTS[key].summarize(raw)
    assert after.numbers[name] == pytest.approx(expected, rel=1e-9)
    assert before.numbers[name] != pytest.approx(expected, rel=1e-9)
    assert after.ours != before.ours or after.verdict != before.verdict


def test_the_report_is_built_from_the_stored_files(tiny, tmp_path):
    """Edit a stored record on disk: the rebuilt table shows the edited number."""
    out, records = tiny
    rows = {r["key"]: r for r in science_report.rows(records)}
    assert list(rows) == list(science.EXPERIMENTS)  # all eight, in the suite's order
    for r in rows.values():
        assert r["published"] and r["ours"] and r["verdict"] in VERDICTS
        assert r["comparable"] == "yes" or r["comparable"].startswith("no — ")
        named = "failed: " in r["explanation"] or "inconclusive: " in r["explanation"]
        assert named == (r["verdict"] != "reproduced")  # the check that did not hold is named
    record = json.loads(science.path(out, "saddles").read_text())
    record["raw"]["runs"]["saddle"]["gradient descent"]["final"] = -0.5432
    (tmp_path / "science").mkdir()
    (tmp_path / "science" / "saddles.json").write_text(json.dumps(record))
    edited = science.load(tmp_path, "saddles", "tiny")
    row = science_report.rows({"saddles": edited})[0]
    assert "gradient descent: loss -0.543" in row["ours"]
    with pytest.raises(science.CorruptRecord, match="at scale 'tiny', not 'cpu'"):
        science.load(tmp_path, "saddles", "cpu")  # another scale's run: named, never rerun over


def test_stored_records_hold_no_nan_or_infinity(tiny):
    out, _ = tiny
    for key in science.EXPERIMENTS:
        text = science.path(out, key).read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{key}.json holds {c}"))


def test_bench_science_end_to_end_resumes_and_rebuilds(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["bench", "--suite", "science", "--scale", "tiny", "--experiment", "deepobs", "--experiment", "saddles",
            "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "Published results" in page and page.count("<h3 id='sci-") == 2
    assert page.index("a smoke test of the code path, not a verdict") < page.index("<h3 id='sci-")
    assert "a smoke test of the code path" in " ".join(result.output.split())
    assert (out / "figures" / "science-deepobs.png").is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["suite"] == "science" and meta["scale"] == "tiny"
    stored = {k: science.path(out, k).read_text() for k in ("deepobs", "saddles")}
    again = runner.invoke(app, args)  # resumes: nothing is rerun, the records stay as they were
    assert again.exit_code == 0, again.output
    assert {k: science.path(out, k).read_text() for k in stored} == stored
    (out / "report.html").unlink()
    rebuilt = runner.invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "Published results" in (out / "report.html").read_text()


def test_bench_science_beside_a_race_keeps_the_race_meta(tmp_path):
    race_meta = {"suite": "quick", "protocol": "v6-quick-b6-s2-grid", "problems": [], "optimizers": []}
    (tmp_path / "meta.json").write_text(json.dumps(race_meta))
    result = CliRunner().invoke(app, ["bench", "--suite", "science", "--scale", "tiny", "--experiment", "saddles",
                                      "--out", str(tmp_path), "--no-report"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "meta.json").read_text()) == race_meta
    assert json.loads((tmp_path / "science" / "meta.json").read_text())["suite"] == "science"


def test_bench_science_bad_input_is_named(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "--suite", "science", "--experiment", "nope", "--out", str(tmp_path / "a")])
    assert r.exit_code != 0 and "nope" in r.output and "autoencoder" in r.output
    r = runner.invoke(app, ["bench", "--suite", "science", "--scale", "huge", "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "huge" in r.output and "tiny" in r.output
    r = runner.invoke(app, ["bench", "--suite", "quick", "--scale", "tiny", "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "--suite science" in r.output
    r = runner.invoke(app, ["bench", "--suite", "science", "--optimizer", "Adam", "--seeds", "3",
                            "--out", str(tmp_path / "e")])
    assert r.exit_code != 0 and "--optimizer, --seeds belong to the races" in r.output
    assert not (tmp_path / "e").exists()
    corrupt = tmp_path / "d" / "science" / "deepobs.json"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text("{not json")
    r = runner.invoke(app, ["bench", "--suite", "science", "--scale", "tiny", "--experiment", "deepobs",
                            "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "deepobs.json is corrupt" in r.output
    assert corrupt.read_text() == "{not json"  # never overwritten
    corrupt.write_text(json.dumps({"scale": "cpu", "raw": {}}))
    r = runner.invoke(app, ["bench", "--suite", "science", "--scale", "tiny", "--experiment", "deepobs",
                            "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "at scale 'cpu', not 'tiny'" in r.output
    assert json.loads(corrupt.read_text()) == {"scale": "cpu", "raw": {}}


# ------------------------------------------------------------------ library pieces the suite added
def test_deepobs_quadratic_is_the_published_definition():
    """Against the definition, from numpy's generators directly: the eigenvalues, the data, θ₀ = 1."""
    q, x_train, x_test = problems.deepobs_quadratic()
    rng = np.random.RandomState(42)
    eig = np.sort(np.concatenate([rng.uniform(0, 1, 90), rng.uniform(30, 60, 10)]))
    assert torch.allclose(q, q.T)
    assert np.allclose(np.linalg.eigvalsh(q.double().numpy()), eig, atol=1e-4)
    assert np.array_equal(x_train.numpy(), np.random.RandomState(42).normal(0, 0.6, (1000, 100)).astype(np.float32))
    assert np.array_equal(x_test.numpy(), np.random.RandomState(43).normal(0, 0.6, (1000, 100)).astype(np.float32))
    task = problems.problem("quadratic_deep").build(3, True)
    assert torch.equal(task.model.theta.detach(), torch.ones(100)) and task.batch_size == 128
    rot = problems._subgroup_rotation(6, np.random.RandomState(0))
    assert np.allclose(rot @ rot.T, np.eye(6)) and np.linalg.det(rot) == pytest.approx(1.0)


def _least_squares(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64))
    return model, x, y


def test_hessian_free_curvature_on_a_minibatch():
    """Martens's split: the gradient on all examples, the Gauss–Newton products on a minibatch. For
    ½‖Xw − y‖²/n, G_S = X_SᵀX_S/|S|: CG's solution is −(G_S + λI)⁻¹g, g the full-batch gradient."""
    model, x, y = _least_squares()
    lam = 0.5
    opt = optim.HessianFree(model.parameters(), damping=lam, cg_max_iter=50, cg_tol=1e-12)
    xs, ys = x[:10], y[:10]

    def closure():
        out = model(x)
        return 0.5 * (out - y).square().mean(), out

    def curvature_closure():
        out = model(xs)
        return 0.5 * (out - ys).square().mean(), out

    w = model.weight.detach().clone().reshape(-1)
    g = x.T @ (x @ w - y.reshape(-1)) / len(x)
    expected = -torch.linalg.solve(xs.T @ xs / len(xs) + lam * torch.eye(3, dtype=torch.float64), g)
    opt.step(closure, curvature_closure=curvature_closure)
    st = opt.state[model.weight]
    assert torch.allclose(st["cg_init"], expected, atol=1e-8)
    assert st["curvature_examples"] == pytest.approx(st["curvature_products"] * 10 / 40)


def test_hessian_free_curvature_closure_on_the_same_batch_changes_nothing():
    results = []
    for use in (False, True):
        model, x, y = _least_squares(seed=1)
        opt = optim.HessianFree(model.parameters(), damping=0.1, cg_max_iter=20)

        def closure():
            out = model(x)
            return 0.5 * (out - y).square().mean(), out
        for _ in range(3):
            opt.step(closure, curvature_closure=closure if use else None)
        results.append(model.weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-12)
    model, x, y = _least_squares()
    with pytest.raises(TypeError, match="curvature_closure must be callable"):
        optim.HessianFree(model.parameters()).step(lambda: (0.5 * (model(x) - y).square().mean(), model(x)),
                                                   curvature_closure=3)


def test_momentum_schedule_is_sutskevers():
    from deepdescent.lab.science.autoencoder import momentum

    assert momentum(0, 0.99, 250) == 0.5 and momentum(249, 0.99, 250) == 0.5
    assert momentum(250, 0.99, 250) == pytest.approx(0.75)
    assert momentum(750, 0.99, 250) == pytest.approx(1 - 2 ** (-1 - math.log2(4)))  # 0.875
    assert momentum(10**7, 0.99, 250) == 0.99


def test_hessian_free_preconditioner():
    """Preconditioned CG solves the same system; with M = diag(G) + λI (ξ = 1) on a diagonal G it
    needs one iteration where plain CG needs three."""
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(30, 3, generator=g, dtype=torch.float64))
    x = q * torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)  # XᵀX = diag(1, 100, 10⁴)
    y = torch.randn(30, 1, generator=g, dtype=torch.float64)
    lam = 0.5
    gn = (x.T @ x / 30).diagonal()
    out = {}
    for fisher in (None, gn):
        model = torch.nn.Linear(3, 1, bias=False).double()
        with torch.no_grad():
            model.weight.fill_(0.1)
        w = model.weight.detach().clone().reshape(-1)
        grad = x.T @ (x @ w - y.reshape(-1)) / 30
        opt = optim.HessianFree(model.parameters(), damping=lam, cg_max_iter=50, cg_tol=1e-15,
                                precondition_exponent=1.0)

        def closure(model=model):
            o = model(x)
            return 0.5 * (o - y).square().mean(), o
        opt.step(closure, fisher_diagonal=fisher)
        st = opt.state[model.weight]
        expected = -grad / (gn + lam)
        assert torch.allclose(st["cg_init"], expected, rtol=1e-8)
        out[fisher is None] = st["curvature_products"]
    assert out[False] < out[True]  # preconditioned: fewer products
    with pytest.raises(ValueError, match="fisher_diagonal must be a tensor of shape"):
        opt.step(closure, fisher_diagonal=torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="precondition_exponent"):
        optim.HessianFree(model.parameters(), precondition_exponent=1.5)


def test_preconditioned_cg_is_exact_in_n_iterations():
    """PCG on a 3-parameter problem with a non-diagonal G and an arbitrary diagonal M: the exact
    solution after 3 iterations (conjugacy in the M⁻¹ inner product)."""
    model, x, y = _least_squares(seed=4)
    x = x @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 3.0, 1.0], [0.2, 0.0, 20.0]], dtype=torch.float64)
    lam = 0.1
    w = model.weight.detach().clone().reshape(-1)
    grad = x.T @ (x @ w - y.reshape(-1)) / len(x)
    expected = -torch.linalg.solve(x.T @ x / len(x) + lam * torch.eye(3, dtype=torch.float64), grad)
    opt = optim.HessianFree(model.parameters(), damping=lam, cg_max_iter=3)

    def closure():
        o = model(x)
        return 0.5 * (o - y).square().mean(), o
    opt.step(closure, fisher_diagonal=torch.tensor([0.3, 7.0, 50.0], dtype=torch.float64))
    assert torch.allclose(opt.state[model.weight]["cg_init"], expected, rtol=1e-7)


# ----------------------------------------------------------------- verdicts over seeds (issue 31)
def test_paired_interval_is_the_t_interval_of_the_log_ratios():
    """Against scipy's t interval of ln(lower/higher) over the seeds, exponentiated."""
    from scipy import stats

    lower, higher = (1.9, 2.3, 1.7, 2.0), (5.0, 4.1, 5.6, 4.4)
    logs = np.log(np.array(lower) / np.array(higher))
    lo, hi = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
    low, mid, high = Paired(lower, higher).interval
    assert (low, mid, high) == pytest.approx((math.exp(lo), math.exp(logs.mean()), math.exp(hi)), rel=1e-12)
    assert Paired(lower, higher).outcome == "holds" and Paired(higher, lower).outcome == "fails"
    assert Paired((1.0,), (2.0,)).outcome == "inconclusive"  # one seed: no interval
    assert Paired((1.0, 2.0, 1.5), (1.6, 1.2, 1.5)).outcome == "inconclusive"
    assert Paired((math.inf, math.inf), (1.0, 1.1)).outcome == "fails"  # diverged every time
    assert judged({"a": Paired(lower, higher), "b": True}, True)["verdict"] == "reproduced"
    assert judged({"a": Paired((1.0, 2.0, 1.5), (1.6, 1.2, 1.5)), "b": True}, True)["verdict"] == VERDICTS[3]
    assert judged({"a": Paired(higher, lower), "b": Paired((1.0, 2.0, 1.5), (1.6, 1.2, 1.5))}, False) == {
        "verdict": "not reproduced", "failed": ("a", "inconclusive: b")}


def _with_finals(raw, finals):
    """``raw`` with each setting's per-seed final errors replaced: seed 0 in its grid (the tuned
    run holds it, the other grid points end 10× higher), seeds 1… in raw["other_seeds"]."""
    raw = copy.deepcopy(raw)
    for name, values in finals.items():
        for i, r in enumerate(raw["runs"][name]):
            r["final"] = values[0] * (1 if i == 0 else 10)
        lr = raw["runs"][name][0].get("lr")
        raw["other_seeds"][name] = [{"lr": lr, "final": v, "diverged": False} for v in values[1:]]
    return raw


MOMENTUM = {"SGD": (5.0, 5.2, 5.1), "NAG μ = 0.9 constant": (4.0, 4.1, 4.2), "NAG μ_max = 0.9": (2.8, 2.9, 2.85),
            "NAG μ_max = 0.99": (1.9, 1.85, 1.95), "NAG μ_max = 0.999": (1.5, 1.55, 1.45)}
AUTOENCODER = {"SGD": (5.0, 5.2, 5.1), "momentum": (2.5, 2.6, 2.4), "NAG": (1.9, 1.85, 1.95), "HF": (8.3, 7.4, 7.9)}


@pytest.mark.parametrize("key,finals,moved,expected", [
    ("momentum_schedule", MOMENTUM, {"NAG μ_max = 0.999": (2.5, 2.55, 2.45)}, "partly"),
    ("autoencoder", AUTOENCODER, {"HF": (1.0, 1.1, 0.9)}, "reproduced"),
])
def test_a_verdict_holds_within_the_seeds_spread_and_moves_beyond_it(tiny, key, finals, moved, expected):
    """Jitter every stored per-seed error by up to ±2% (inside the seeds' own spread): the verdict
    stays; move one setting's seeds past the compared one: the verdict changes; make one
    comparison straddle its threshold: inconclusive at this scale."""
    _, records = tiny
    exp = science.EXPERIMENTS[key]
    base = exp.summarize(_with_finals(records[key]["raw"], finals)).verdict
    rng = np.random.default_rng(0)
    for _ in range(20):
        jittered = {k: tuple(v * rng.uniform(0.98, 1.02) for v in vs) for k, vs in finals.items()}
        assert exp.summarize(_with_finals(records[key]["raw"], jittered)).verdict == base
    assert exp.summarize(_with_finals(records[key]["raw"], {**finals, **moved})).verdict == expected != base
    straddle = {"momentum_schedule": {"NAG μ_max = 0.999": (1.7, 2.2, 1.95)},  # ratios 0.89, 1.19, 1.0 to μ 0.99
                "autoencoder": {"HF": (0.5, 0.55, 0.45), "NAG": (2.0, 5.6, 4.0)}}[key]  # NAG/SGD: 0.4, 1.08, 0.78
    assert exp.summarize(_with_finals(records[key]["raw"], {**finals, **straddle})).verdict == VERDICTS[3]


def test_a_record_stored_before_the_seeds_says_to_rerun(tiny):
    """A seeded experiment's record without the other seeds (an earlier version's, one seed per
    setting) has no interval: its row says so and how to get one; a current record does not."""
    _, records = tiny
    old = copy.deepcopy(records["momentum_schedule"])
    del old["raw"]["other_seeds"]
    (row,) = science_report.rows({"momentum_schedule": old})
    assert "earlier version" in row["explanation"] and row["verdict"] != "reproduced"
    assert all("earlier version" not in r["explanation"] for r in science_report.rows(records))


def _kfac_raw(tiny, kfac_at, momentum_at, kfac_final, momentum_final=1.0):
    """The tiny record with three seeds whose curves cross momentum's final error (1.0) at the given
    gradient-equivalents (None: never) and end at the given errors."""
    _, records = tiny
    raw = copy.deepcopy(records["kfac"]["raw"])

    def run(at, final, lr):
        curve = [[0.0, 10.0]] + [[g, final if at is not None and g >= at else max(final, 2.0)] for g in (1, 2, 4, 8)]
        curve[-1][1] = final
        return {"lr": lr, "curve": curve, "final": final, "diverged": False, "seconds": 1.0}
    for m, at, final in (("K-FAC", kfac_at, kfac_final), ("momentum", momentum_at, momentum_final)):
        raw["runs"][m] = [run(at[0], final[0], 0.01)]
        raw["other_seeds"][m] = [run(a, f, 0.01) for a, f in zip(at[1:], final[1:])]
    return raw


def test_kfac_verdict_follows_the_gradient_equivalents_to_momentums_error(tiny):
    exp = science.EXPERIMENTS["kfac"]
    fast = _kfac_raw(tiny, (1, 2, 1), (8, 8, 8), (0.5, 0.45, 0.55), (1.0, 1.0, 1.0))
    summary = exp.summarize(fast)
    assert summary.verdict == "reproduced", summary
    assert summary.numbers["K-FAC_ge_to_target"] == 1 and summary.numbers["momentum_ge_to_target"] == 8
    slow = _kfac_raw(tiny, (None, None, None), (8, 8, 8), (1.5, 1.6, 1.4), (1.0, 1.0, 1.0))
    assert exp.summarize(slow).verdict == "not reproduced"
    mixed = _kfac_raw(tiny, (1, None, 4), (8, 8, 8), (0.5, 1.6, 0.9), (1.0, 1.0, 1.0))
    assert exp.summarize(mixed).verdict == VERDICTS[3]
