"""The ``deepdescent`` command line: ``bench``, ``report``, ``list``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="deepdescent: optimization of deep models after chapter 8 of Deep Learning.",
                  no_args_is_help=True, add_completion=False)
console = Console(width=None if os.isatty(1) or "COLUMNS" in os.environ else 100)


def _version(show: bool) -> None:
    if show:
        import deepdescent

        console.print(f"deepdescent {deepdescent.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """deepdescent: optimization of deep models after chapter 8 of Deep Learning."""


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # a name of its own: other processes may probe the same folder
            pass
    except OSError as err:
        raise typer.BadParameter(f"cannot write to {str(out)!r}: {err.strerror}", param_hint="--out") from err


class _Races:
    """Runs one race (problem, optimizer, protocol, storage URL) per call, in a worker process or
    in the bench's own; a process's races share one catalog, so that a workload is imported and
    checked once per process, however many races it runs. Sent to a worker without it."""

    def __init__(self, catalog=None) -> None:
        self.catalog = catalog

    def __getstate__(self) -> dict:
        return {"catalog": None}  # a worker loads what it races itself

    def __call__(self, args: tuple) -> tuple[str, str, dict | None]:
        """One race; None for its runs when another process holds its next batch."""
        from deepdescent.lab import claims, optimizers, study
        from deepdescent.lab.catalog import Catalog
        from deepdescent.lab.search import POLL

        problem, optimizer, proto, url = args
        torch_threads = int(os.environ.get("DEEPDESCENT_THREADS", "0"))
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.catalog = self.catalog or Catalog()
        try:
            runs = study.run_race(self.catalog.problem(problem), optimizers.optimizer(optimizer), proto, url,
                                  wait=False)
        except claims.Busy:  # another process trains this race's next batch: come back to it later
            time.sleep(POLL)
            return problem, optimizer, None
        return problem, optimizer, runs  # the RunResults as they are (pickled to the bench; no JSON round trip)


def _stored(problem: str, optimizer: str, proto, url: str, catalog):
    """The finished results of one job, or None (reads only; creates nothing)."""
    from deepdescent.lab import optimizers, study
    from deepdescent.lab import storage as db

    try:
        return study.run_race(catalog.problem(problem), optimizers.optimizer(optimizer), proto, url, run=False)
    except db.Missing:
        return None


def _columns(eta: bool) -> list:
    """The progress bar: its description cut with … where the line is too narrow, so that the
    counts, the elapsed time and the ETA always show whole."""
    from rich.table import Column

    def whole() -> Column:
        return Column(no_wrap=True, overflow="ignore")
    rest = 20 + 9 + 8 + (4 + 8 if eta else 0) + 6  # the bar, n/total, elapsed, ETA, the spaces between
    return [TextColumn("{task.description}", style="cyan", table_column=Column(
                no_wrap=True, overflow="ellipsis", max_width=max(12, console.width - rest))),
            BarColumn(bar_width=20, table_column=whole()),
            TextColumn("{task.completed}/{task.total}", table_column=whole()), TimeElapsedColumn(table_column=whole()),
            *([TextColumn("ETA", table_column=whole()), TimeRemainingColumn(table_column=whole())] if eta else [])]


def _running(jobs: list[tuple[str, str]]) -> str:
    names = [f"{p}/{o}" for p, o in jobs]
    text = ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")
    return f"running {text}" if names else "starting"


#: A race whose worker process dies this many times (killed, out of memory, os._exit in a foreign
#: optimizer) is left out of this bench (what it stored stays; rerunning tries it again).
LOST_LIMIT = 3


def _race(args: list[tuple], workers: int, bar, task, done, catalog) -> None:
    """Run the jobs (in ``workers`` processes), calling ``done(problem, optimizer, runs)`` as each ends.
    A job whose next batch another process (here or on another machine) trains goes back to the
    end of the queue. A job whose worker dies (kill -9, the out-of-memory killer) is run again in
    another worker, from what it stored; after LOST_LIMIT deaths, or when it raises, it is left
    out with one line saying why, and the others go on. ``catalog``: the bench's own (the races
    it runs in its own process use what it loaded)."""
    from deepdescent.lab.workers import Outcome, Workers, error_name

    def left_out(a: tuple, why: str) -> None:
        bar.console.print(f"{a[0]}/{a[1]}: {why}; left out of this bench (what it stored stays; rerun to try it "
                          "again)", soft_wrap=True)
        bar.advance(task)

    def finished(a: tuple, outcome: Outcome) -> bool:
        """Take a job's outcome: stored (True), left out because it raised (True), or to run again
        because another process trains its next batch (False). Storage errors end the bench."""
        err = outcome.raised
        if isinstance(err, study_errors()):
            raise err
        if err is not None:  # one race failed (a foreign optimizer raising)
            message = str(err).splitlines()[0] if str(err) else ""
            left_out(a, f"failed: {error_name(err)}: {message}")
            return True
        p, o, runs = outcome.value
        if runs is None:
            return False
        done(p, o, runs)
        bar.advance(task)
        return True

    if workers > 1 and len(args) > 1:
        os.environ.setdefault("DEEPDESCENT_THREADS", "1")  # each worker one thread: N workers, N cores
        deaths: dict[tuple, int] = {}
        with Workers(_Races(), workers) as pool:
            for a in args:
                pool.submit(a)
            while pool.pending:
                for outcome in pool.outcomes(timeout=0.2):
                    a = outcome.job
                    if not outcome.lost:
                        if not finished(a, outcome):
                            pool.submit(a)
                        continue
                    deaths[a[:2]] = deaths.get(a[:2], 0) + 1
                    if deaths[a[:2]] >= LOST_LIMIT:
                        left_out(a, f"its worker process died {deaths[a[:2]]} times")
                    else:
                        bar.console.print(f"{a[0]}/{a[1]}: its worker process died; running it again", soft_wrap=True)
                        pool.submit(a)
                bar.update(task, description=_running([a[:2] for a in pool.running()]))
    else:
        race = _Races(catalog)
        queue = list(args)
        while queue:
            a = queue.pop(0)
            bar.update(task, description=_running([(a[0], a[1])]))
            try:
                outcome = Outcome(a, value=race(a))
            except Exception as err:  # noqa: BLE001 - judged by finished() (storage errors end the bench)
                outcome = Outcome(a, raised=err)
            if not finished(a, outcome):
                queue.append(a)


def study_errors() -> type[Exception]:
    """The storage's errors: they end the bench (with one line), never just one race."""
    from deepdescent.lab import storage as db

    return db.StorageError


def _write_meta(out: Path, meta: dict) -> None:
    from deepdescent.lab import files

    files.write_text(out / "meta.json", json.dumps(meta, indent=1))


def _fail(message: str) -> typer.Exit:
    """One line on the console, exit status 1 (no traceback: the message names the cause)."""
    console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(1)


def _report_written(write: Callable[[], Path], out: Path) -> Path:
    """``write()``; a failed write (a full disk, no permission) ends with one line: the results are
    stored, the previous report.html is left whole, and the command that writes it later."""
    try:
        return write()
    except OSError as err:
        raise _fail(f"the report could not be written in {out}: {err.strerror or err}; the results are stored "
                    f"(write the report later with `deepdescent report {out}`)") from None


def _resume_hint(out: Path, done: int, total: int) -> str:
    import shlex

    command = "deepdescent " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"interrupted: {done} of {total} races stored in {out}; resume with: {command}"


#: Bounds of the race's sizes: beyond them a grid or a vectorized batch no longer fits in memory
#: (every learning rate × seed trains at once) and a grid's points overflow a float.
BUDGET_MAX, SEEDS_MAX, LR_CENTER_MAX = 200, 100, 1e6
QUICK_TIME = "about 6 minutes on an idle 2-core machine"  # measured: BENCHMARKS.md, "The quick suite"
WORKLOADS_TIME = "4–9 minutes on an idle 2-core machine"  # measured: BENCHMARKS.md, "The workloads suite"
MODERN_TIME = "about 6 minutes on an idle 2-core machine"  # measured: BENCHMARKS.md, "The modern suite"
SCIENCE_TIME = "about 22 minutes on 2 cores"  # measured: BENCHMARKS.md, "The science suite"
SECOND_ORDER_TIME = "about 2 minutes on an idle 2-core machine"  # measured: BENCHMARKS.md, "The second-order suite"


def _say_changed_workloads(out: Path, described: dict) -> None:
    """One line per workload whose fingerprint differs from the one ``out``'s meta.json recorded:
    its races run again; the results of the other version stay stored under their own names."""
    try:
        before = json.loads((out / "meta.json").read_text()).get("problems_described", {})
    except (OSError, ValueError, AttributeError):
        return
    for name, info in described.items():
        old = before.get(name, {}).get("fingerprint") if isinstance(before.get(name), dict) else None
        if old and old != info["fingerprint"]:
            console.print(f"{name} changed since the results in {out} (data, model, loss or settings: fingerprint "
                          f"{old} → {info['fingerprint']}): its races run again; the stored ones stay under the old "
                          "fingerprint", soft_wrap=True, highlight=False)


def _problem_names(given: list[str], catalog) -> list[str]:
    """The canonical names of the problems to race (their workloads loaded into ``catalog``). A lab
    problem that does not exist stops the bench (a typo); a workload that fails to import or to
    check is left out with one line naming what is wrong, and the others race."""
    from deepdescent.lab import problems

    names = []
    for n in given:
        try:
            names.append(catalog.problem(n).name)
        except ValueError as err:
            if not problems.is_workload(n):
                raise typer.BadParameter(str(err), param_hint="--problem") from None
            console.print(f"{err}; left out of this bench", soft_wrap=True, highlight=False)
    if not names:
        raise typer.BadParameter("no problem left to race (see the lines above)", param_hint="--problem")
    return list(dict.fromkeys(names))


@app.command()
def bench(
    suite: Annotated[str, typer.Option(
        help=f"quick ({QUICK_TIME}), full, depth (deep linear network: depth × initialization), modern "
             f"(the book's fastest against AdamW, NAdam, RAdam and Schedule-Free AdamW on the quick "
             f"problems, {MODERN_TIME}), workloads (a ResNet, a Transformer and an LSTM, {WORKLOADS_TIME}), "
             f"second_order (§8.6: the book's second-order methods against K-FAC and Shampoo, with Adam and "
             f"Nesterov, on the quick problems, {SECOND_ORDER_TIME}), or science (chapter 8's published claims "
             f"reproduced, {SCIENCE_TIME}).")] = "quick",
    problem: Annotated[list[str] | None, typer.Option(
        help="Only these problems (repeatable); parameters as name:key=value,…, e.g. adding:T=100, "
             "deep_linear:depth=50,scheme=normalized.")] = None,
    optimizer: Annotated[list[str] | None, typer.Option(
        help="Only these optimizers (repeatable): a lab name (`deepdescent list`), an entry point of "
             "'deepdescent.optimizers', or an import path (torch.optim.AdamW, package.module:Class), which "
             "races member by member.")] = None,
    hparam: Annotated[list[str] | None, typer.Option(
        help="NAME=VALUE for the import-path optimizers (repeatable; OPTIMIZER@NAME=VALUE for one of them), "
             "e.g. --hparam weight_decay=0.1.")] = None,
    lr_center: Annotated[float | None, typer.Option(
        help=f"Centre of the learning-rate grid of the import-path optimizers, in (0, {LR_CENTER_MAX:g}] "
             "(default: the class's default lr).")] = None,
    budget: Annotated[int | None, typer.Option(
        min=1, max=BUDGET_MAX, help=f"Learning rates tried per optimizer (1…{BUDGET_MAX}).")] = None,
    search: Annotated[str, typer.Option(help="grid (log grid), qmc (quasi-random) or tpe.")] = "grid",
    seeds: Annotated[int | None, typer.Option(min=1, max=SEEDS_MAX, help=f"Seeds per setting (1…{SEEDS_MAX}).")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Local worker processes, one thread each (default: one per core, at most 4).")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: SQLite under --out).")] = None,
    out: Annotated[Path, typer.Option(help="Run directory (results, figures, report.html).")] = Path("runs/bench"),
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N: where the members train.")] = "cpu",
    time_limit: Annotated[float | None, typer.Option(
        min=0.001, help="Seconds per run (off by default). Cut runs are flagged ✂; results then depend on the "
                        "machine's speed and load, so the limit is part of the study names.")] = None,
    write_report: Annotated[bool, typer.Option(
        "--report/--no-report", help="Write report.html and the figures when the race is done (--no-report: "
                                     "only the tables; `deepdescent report OUT` writes it later).")] = True,
    experiment: Annotated[list[str] | None, typer.Option(
        help="--suite science: only these experiments (repeatable): autoencoder, depth, clipping, saddles, "
             "gradient_norm, interpolation, deepobs, momentum_schedule, kfac.")] = None,
    scale: Annotated[str | None, typer.Option(
        help="--suite science: tiny (seconds: a smoke test), cpu (the default on cpu) or full (the papers' sizes, "
             "the default with --device cuda).")] = None,
) -> None:
    """Race the optimizers of chapter 8 on problems that each show one §8.2 challenge, every optimizer
    with the same compute budget; resumable (rerun the same command)."""
    import platform

    import torch

    from deepdescent.lab import claims, optimizers, problems, protocol, report, study, suites
    from deepdescent.lab import storage as db
    from deepdescent.lab.catalog import Catalog

    if search not in protocol.SEARCHES:
        raise typer.BadParameter(f"unknown search {search!r}; valid: {', '.join(protocol.SEARCHES)}", param_hint="--search")
    try:
        chosen = suites.suite(suite)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--suite") from err
    if chosen.experiments:
        given = [name for name, value in (("--problem", problem), ("--optimizer", optimizer), ("--hparam", hparam),
                                          ("--lr-center", lr_center), ("--budget", budget), ("--seeds", seeds),
                                          ("--workers", workers), ("--storage", storage), ("--time-limit", time_limit),
                                          ("--search", None if search == "grid" else search)) if value]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} belong to the races, not --suite science (whose experiments "
                                     "fix their own problems, optimizers and budgets; choose them with --experiment)")
        _science(out, device, scale, experiment, write_report)
        return
    if lr_center is not None and not 0 < lr_center <= LR_CENTER_MAX:  # NaN fails this too
        raise typer.BadParameter(f"{lr_center!r} is not in (0, {LR_CENTER_MAX:g}]", param_hint="--lr-center")
    if experiment or scale:
        raise typer.BadParameter(f"--experiment and --scale belong to --suite science (given --suite {suite})")
    # one execution path throughout every run (a kernel switched in mid-run would change the last
    # bits of the results with the machine's speed): wait for a missing kernel instead
    os.environ.setdefault("DEEPDESCENT_KERNEL_BUILD", "wait")
    _check_device(device)
    catalog = Catalog()  # the workloads this bench loads, once
    names = _problem_names(problem or chosen.problems(device), catalog)
    try:
        opts = _with_hparams(optimizer or chosen.optimizers(), hparam or [], lr_center)
        if not optimizer and chosen.missing():
            console.print(f"not installed, left out: {', '.join(chosen.missing())} (pip install '{chosen.install}')")
        for o in opts:
            optimizers.optimizer(o)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    _check_out(out)
    for check, name in ((claims.claim_timeout, "DEEPDESCENT_CLAIM_TIMEOUT"), (db.patience, "DEEPDESCENT_STORAGE_PATIENCE")):
        try:
            check()
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint=name) from None
    proto = protocol.Protocol(suite=suite, budget=budget or chosen.budget, seeds=seeds or chosen.seeds, search=search,
                           device=device, time_limit=time_limit)
    url = db.url_for(out, storage)
    try:
        db.open_study(url, "deepdescent-probe", wait_out_outages=False)  # a corrupt or unreachable storage fails here, clearly
    except db.StorageError as err:
        raise _fail(str(err)) from None
    jobs = [(p, o) for p in names for o in opts
            if study.applicable(catalog.problem(p), optimizers.optimizer(o), proto.quick)]
    # the password never reaches meta.json (`deepdescent report --storage URL` gives it back); the
    # default SQLite file is named relative to the run directory, so a copied run reads its own
    meta = {"suite": suite, "protocol": proto.tag(), "problems": names, "optimizers": opts,
            "described": {o: optimizers.description(optimizers.optimizer(o)) for o in opts},
            "problems_described": {p: problems.description(catalog.problem(p)) for p in names
                                   if catalog.problem(p).workload},
            **({"storage": db.redact(url)} if storage else
               {"storage": "results.db in the run directory", "database": "results.db"}),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    _say_changed_workloads(out, meta["problems_described"])
    if not (out / "meta.json").exists():  # a finished run's meta.json is replaced only when this one finishes
        _write_meta(out, meta)
    results: report.Results = {p: {} for p in names}
    todo = []
    for p, o in jobs:
        try:
            runs = _stored(p, o, proto, url, catalog)
        except db.StorageError as err:
            raise _fail(f"{err} (nothing was run)") from None
        if runs is None:
            todo.append((p, o, proto, url))  # the Protocol itself travels to the workers (pickled whole)
        else:
            results[p][o] = runs
    if len(todo) < len(jobs):
        console.print(f"{len(jobs) - len(todo)} of {len(jobs)} races already stored in {out}")

    def done(p: str, o: str, runs: dict) -> None:
        results[p][o] = runs

    start = time.perf_counter()
    with Progress(*_columns(eta=True), console=console, transient=True) as bar:
        task = bar.add_task("starting", total=len(todo))
        try:
            _race(todo, min(workers or min(4, os.cpu_count() or 1), max(1, len(todo))), bar, task, done, catalog)
        except KeyboardInterrupt:
            bar.stop()
            stored_now = sum(len(r) for r in results.values())
            console.print(_resume_hint(out, stored_now, len(jobs)), soft_wrap=True)
            raise typer.Exit(130) from None
        except db.StorageError as err:  # a lasting outage, a full disk: what is stored stays
            bar.stop()
            stored_now = sum(len(r) for r in results.values())
            raise _fail(f"{err}; {_resume_hint(out, stored_now, len(jobs))}") from None
    with contextlib.suppress(Exception):  # noqa: BLE001 - housekeeping: claims left by killed processes
        claims.sweep(url)
    results = {p: r for p, r in results.items() if r}
    if not results:  # every race failed: the run directory keeps the meta.json of its last finished bench
        raise _fail("no race finished (see the lines above); nothing stored, the run directory is as it was")
    report.terminal(results, console, catalog)
    meta["seconds"] = round(time.perf_counter() - start, 1)
    _write_meta(out, meta)
    if not write_report:
        console.print(f"results stored; write the report with `deepdescent report {out}`")
        return
    with console.status("writing the report"):
        page = _report_written(lambda: report.write(results, out, meta, catalog), out)
    console.print(f"report: {page}  (figures in {out / 'figures'}; rebuild with `deepdescent report {out}`)")


def _science(out: Path, device: str, scale: str | None, only: list[str] | None, write_report: bool) -> None:
    """``bench --suite science``: run the experiments not yet stored under ``out``, print the
    Published results table, write the report."""
    import platform

    import torch

    from deepdescent.lab import science
    from deepdescent.lab.science import report as science_report

    os.environ.setdefault("DEEPDESCENT_KERNEL_BUILD", "wait")
    _check_device(device)
    scale = scale or ("full" if device.startswith("cuda") else "cpu")
    if scale not in science.SCALES:
        raise typer.BadParameter(f"scale={scale!r}; valid: {', '.join(science.SCALES)}", param_hint="--scale")
    unknown = [k for k in only or [] if k not in science.EXPERIMENTS]
    if unknown:
        raise typer.BadParameter(f"unknown experiment(s) {', '.join(map(repr, unknown))}; valid: "
                                 f"{', '.join(science.EXPERIMENTS)}", param_hint="--experiment")
    _check_out(out)
    meta = {"suite": "science", "protocol": f"science-{scale}", "scale": scale, "experiments": only or list(science.EXPERIMENTS),
            "device": device, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    start = time.perf_counter()
    with Progress(*_columns(eta=False), console=console,
                  transient=True) as bar:
        task = bar.add_task("starting", total=len(meta["experiments"]))

        def progress(key: str, done: int, total: int) -> None:
            bar.update(task, completed=done, description=key or "done")
        try:
            records = science.run_suite(out, scale, device, only, progress)
        except science.CorruptRecord as err:  # named, never overwritten
            bar.stop()
            raise _fail(str(err)) from None
        except KeyboardInterrupt:
            bar.stop()
            console.print(_resume_hint(out, len(list((out / "science").glob("*.json"))), len(meta["experiments"])),
                          soft_wrap=True)
            raise typer.Exit(130) from None
    meta["seconds"] = round(time.perf_counter() - start, 1)
    _write_meta(out / "science", meta)
    if _suite_of(out) in (None, "science"):
        _write_meta(out, meta)  # a race's meta.json in the same directory is left as it is
    table = Table(title="Published results", caption=science_report.SMOKE if science_report.smoke_test(records) else None)
    for c in ("experiment", "published", "ours", "comparable", "verdict"):
        table.add_column(c, overflow="fold")
    for r in science_report.rows(records):
        table.add_row(r["title"], r["published"], r["ours"], "yes" if r["comparable"] == "yes" else "no",
                      f"{r['verdict']}: {r['explanation']}")
    console.print(table)
    if write_report:
        with console.status("writing the report"):
            page = _report_written(lambda: science_report.write(records, out, meta), out)
        console.print(f"report: {page}  (figures in {out / 'figures'}; rebuild with `deepdescent report {out}`)")


def _suite_of(out: Path) -> str | None:
    """The suite whose meta.json ``out`` holds (None: none, or unreadable)."""
    try:
        return json.loads((out / "meta.json").read_text()).get("suite")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _checked_meta(meta, path: Path) -> dict:
    """A run directory's meta.json, its fields checked (the folder may come from anyone): each wrong
    one is named with what is valid, before anything is read with it."""
    from deepdescent.lab import problems, protocol, science

    def bad(what: str) -> typer.BadParameter:
        return typer.BadParameter(f"{str(path)!r} is not a meta.json bench writes: {what}", param_hint="DIRECTORY")

    def names(key: str) -> list[str]:
        value = meta.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(f"{key!r} must be a list of names, not {value!r}"[:300])
        return value

    if not isinstance(meta, dict):
        raise bad(f"it holds a {type(meta).__name__}, not an object")
    if meta.get("suite") == "science":
        unknown = [k for k in names("experiments") if k not in science.EXPERIMENTS]
        if unknown or meta.get("scale") not in science.SCALES:
            raise bad(f"experiments {unknown} or scale {meta.get('scale')!r} unknown (experiments: "
                      f"{', '.join(science.EXPERIMENTS)}; scales: {', '.join(science.SCALES)})")
        return meta
    if not isinstance(meta.get("protocol"), str):
        raise bad(f"'protocol' must be a string such as 'v{protocol.PROTOCOL_VERSION}-quick-b6-s2-grid', not {meta.get('protocol')!r}")
    version = meta["protocol"].split("-")[0]
    if version != f"v{protocol.PROTOCOL_VERSION}":
        raise typer.BadParameter(f"{str(path.parent)!r} holds results of protocol {version}; this deepdescent "
                                 f"reads v{protocol.PROTOCOL_VERSION} only: rerun `deepdescent bench` for it",
                                 param_hint="DIRECTORY")
    described = meta.get("problems_described", {})
    if not isinstance(described, dict):
        raise bad(f"'problems_described' must be an object, not {described!r}"[:300])
    for p in names("problems"):
        try:  # a workload is described from what the directory recorded: never imported
            problems.describe(p, described.get(p)) if problems.is_workload(p) else problems.problem(p)
        except ValueError as err:
            raise bad(f"problem {p!r}: {err}") from None
    names("optimizers")
    database = meta.get("database")
    if database is not None and (not isinstance(database, str) or Path(database).name != database or not database):
        raise bad(f"'database' must be a file name in the run directory, not {database!r}")
    if database is None and not isinstance(meta.get("storage"), str):
        raise bad(f"neither 'database' nor a 'storage' URL given (storage: {meta.get('storage')!r})")
    return meta


def _science_report(directory: Path, meta: dict) -> None:
    from deepdescent.lab import science
    from deepdescent.lab.science import report as science_report

    try:
        records = {k: r for k in meta["experiments"] if (r := science.load(directory, k, meta["scale"])) is not None}
    except science.CorruptRecord as err:
        raise _fail(str(err)) from None
    if not records:
        raise typer.BadParameter(f"no finished experiments in {directory / 'science'}", param_hint="DIRECTORY")
    console.print(f"report: {_report_written(lambda: science_report.write(records, directory, meta), directory)}")


def _with_hparams(names: list[str], hparams: list[str], lr_center: float | None) -> list[str]:
    """The optimizer names with ``--hparam``/``--lr-center`` folded into the foreign ones'
    canonical names (``torch.optim.AdamW(lr=0.0003, weight_decay=0.1)``)."""
    import ast

    from deepdescent.lab import optimizers

    foreign = [n for n in names if n not in optimizers.OPTIMIZERS]
    if (hparams or lr_center is not None) and not foreign:
        raise ValueError("--hparam and --lr-center apply to optimizers given by import path or entry point "
                         f"(the lab's own have fixed options); none among {', '.join(names)}")
    extra: dict[str, dict] = {n: {} for n in foreign}
    for item in hparams:
        target, _, assignment = item.rpartition("@")
        name, eq, text = assignment.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"invalid --hparam {item!r}: expected NAME=VALUE or OPTIMIZER@NAME=VALUE")
        if target and target not in extra:
            raise ValueError(f"invalid --hparam {item!r}: {target!r} is not one of the import-path optimizers "
                             f"({', '.join(foreign)})")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()  # a bare word: a string option
        for n in [target] if target else foreign:
            extra[n][name.strip()] = value
    out = []
    for n in names:
        if n in extra:
            path, given = optimizers.parse(n)
            center = {"lr": lr_center} if lr_center is not None else {}
            n = optimizers.key(path, {**given, **center, **extra[n]})
        out.append(n)
    return out


def _check_device(device: str) -> None:
    import torch

    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise typer.BadParameter(f"device={device!r}; valid: cpu, cuda, cuda:N", param_hint="--device")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise typer.BadParameter(f"device={device!r}: no CUDA device is available here "
                                     f"(torch {torch.__version__}, torch.cuda.is_available() is False)",
                                     param_hint="--device")
        if index and int(index) >= torch.cuda.device_count():
            raise typer.BadParameter(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA "
                                     "device(s)", param_hint="--device")


@app.command("report")
def report_cmd(
    directory: Annotated[Path, typer.Argument(help="A run directory made by `deepdescent bench`.")],
    storage: Annotated[str | None, typer.Option(
        help="The run's storage URL, when it was given to bench with a password (meta.json keeps it "
             "hidden).")] = None,
) -> None:
    """Rebuild the report of a run directory from its stored results."""
    from deepdescent.lab import protocol, report, study
    from deepdescent.lab import storage as db
    from deepdescent.lab.catalog import Catalog

    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise typer.BadParameter(f"{str(directory)!r} has no meta.json: not a `deepdescent bench` run directory",
                                 param_hint="DIRECTORY")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise typer.BadParameter(f"{str(meta_path)!r} is corrupt ({getattr(err, 'msg', err.reason)})",
                                 param_hint="DIRECTORY") from err
    meta = _checked_meta(meta, meta_path)
    if meta.get("suite") == "science":
        _science_report(directory, meta)
        return
    try:
        proto = protocol.Protocol.from_tag(meta["protocol"])
    except (ValueError, IndexError) as err:
        raise typer.BadParameter(f"{str(meta_path)!r}: protocol {meta['protocol']!r} is not one bench writes "
                                 f"(e.g. {protocol.Protocol().tag()!r})", param_hint="DIRECTORY") from err
    url = storage or (f"sqlite:///{(directory / meta['database']).resolve()}" if meta.get("database")
                      else meta["storage"])
    if not storage and "***" in url:
        raise typer.BadParameter(f"the storage URL's password is not kept in meta.json ({db.redact(url)}): "
                                 "pass it with --storage URL", param_hint="--storage")
    results: report.Results = {}
    described = meta.get("described") if isinstance(meta.get("described"), dict) else {}
    workloads = meta.get("problems_described", {})
    catalog = Catalog(described_optimizers=described)
    try:
        for p in meta["problems"]:
            prob = catalog.describe(p, workloads.get(p))
            for o in meta["optimizers"]:
                # nothing a run directory names is imported: its optimizers are described, not loaded
                spec = catalog.spec(o)
                if spec is None:
                    continue
                try:
                    runs = study.run_race(prob, spec, proto, url, run=False)
                except db.Missing:
                    continue
                results.setdefault(p, {})[o] = runs
    except db.StorageError as err:
        raise _fail(str(err)) from None
    if not results:
        raise typer.BadParameter(f"no finished results in {db.redact(url)}", param_hint="DIRECTORY")
    report.terminal(results, console, catalog)
    page = _report_written(lambda: report.write(results, directory, {**meta, "storage": db.redact(url)}, catalog),
                           directory)
    console.print(f"report: {page}")


@app.command("list")
def list_cmd() -> None:
    """The problems and optimizers of the lab."""
    from deepdescent.lab import optimizers, problems

    t = Table(title="problems")
    t.add_column("name", no_wrap=True)
    for c in ("challenge (§8.2)", "suites"):
        t.add_column(c)
    t.add_column("description", overflow="fold")
    for p in problems.PROBLEMS.values():
        variant = f"\n[dim]variant: {p.example}[/dim]" if p.example else ""
        t.add_row(p.name, p.challenge, ", ".join(p.suites), p.description + variant)
    console.print(t)
    t = Table(title="optimizers")
    for c in ("name", "book", "kind", "default lr"):
        t.add_column(c)
    for o in optimizers.OPTIMIZERS.values():
        t.add_row(o.name + ("" if o.in_book else " †"), o.book, o.kind,
                  "–" if o.default_lr is None else f"{o.default_lr:g}")
    console.print(t)
    console.print("† a descendant of the chapter's methods: raced on request (--optimizer NAME)")
    registered = optimizers.entry_points()
    if registered:
        t = Table(title=f"registered by installed packages (entry points {optimizers.ENTRY_POINTS!r})")
        for c in ("name", "class", "kind", "default lr"):
            t.add_column(c)
        for name, target in registered.items():
            try:
                o = optimizers.optimizer(name)
                t.add_row(name, target, o.kind, "–" if o.default_lr is None else f"{o.default_lr:g}")
            except ValueError as err:  # a broken package: say why, list the others
                t.add_row(name, target, "unusable", str(err))
        console.print(t)


@app.command()
def digits(
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training set per optimizer.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialization and the minibatch order.")] = 0,
    optimizer: Annotated[list[str] | None, typer.Option(help="Race only these optimizers (repeatable).")] = None,
) -> None:
    """The digits MLP with every first-order optimizer of chapter 8 at a sensible learning rate: one table
    (descendants such as AdamW with --optimizer)."""
    from deepdescent.lab import digits as dg

    chosen = optimizer or dg.BOOK
    unknown = [o for o in chosen if o not in dg.OPTIMIZERS]
    if unknown:
        raise typer.BadParameter(f"unknown optimizer(s) {unknown}; valid: {', '.join(dg.OPTIMIZERS)}",
                                 param_hint="--optimizer")
    data = dg.load_digits(seed)
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("digits MLP", total=len(chosen))
        for name in chosen:
            progress.update(task, description=f"digits MLP: {name}")
            results.append(dg.train(name, dg.OPTIMIZERS[name], data, epochs=epochs, seed=seed))
            progress.advance(task)
    table = Table(title=f"digits MLP 64-64-64-10 (tanh), batch 32, {epochs} epochs, seed {seed}")
    for col in ("optimizer", "final train loss", "test accuracy", "wall time (s)"):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    for r in results:
        table.add_row(r.name, f"{r.train_loss:.4f}", f"{100 * r.test_accuracy:.1f}%", f"{r.seconds:.2f}")
    console.print(table)


if __name__ == "__main__":
    app()
