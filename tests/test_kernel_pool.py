"""A local sweep's warm kernels (canary_lib/kernel_pool.py): one kernel serves job after job, every notebook finds
what a fresh kernel gives it, a failed job's or dead kernel is replaced, none outlives the sweep.

    .venv/bin/pytest tests/test_kernel_pool.py -q

The sweeps run the fake notebooks of tests/test_sweep_runner.py through the real runner (submitit's local
executor, papermill), each notebook first writing a line about the kernel it runs in.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import nbformat
import papermill as pm
import psutil
import pytest

from canary_lib.job_progress import PROGRESS_ENV
from canary_lib.kernel_pool import BorrowedKernelManager, KernelPool, prepare_kernel
from canary_lib.sweep import NOTEBOOKS, Job, kernel_env, run_sweep
from test_sweep_runner import BODY, _sweep, _write_notebooks
from test_sweep_runner import project as project  # noqa: F401 (the fixture)

# Before each fake notebook's own cell: where it runs, whether the last notebook's variable is still there; then
# a planned failure (a raising cell) or a kernel that dies (os._exit) for the methods the test marks.
RECORD = textwrap.dedent("""
    import json, os
    run = Path(RUN_DIR).parent.name if 'RUN_DIR' in dir() else None
    with open('kernels.log', 'a') as fh:
        fh.write(json.dumps({'stage': STAGE, 'run': run, 'pid': os.getpid(), 'leaked': 'LEFT_BEHIND' in dir(),
                             'progress': os.environ.get(PROGRESS_ENV), 'cwd': os.getcwd()}) + '\\n')
    LEFT_BEHIND = True
    if run and Path('RAISE_' + run).exists():
        raise RuntimeError('planned failure in ' + run)
    if run and Path('EXIT_' + run).exists():
        os._exit(1)
""")


@pytest.fixture
def recording(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for stage in NOTEBOOKS:
        header = f"STAGE = {stage!r}\nPROGRESS_ENV = {PROGRESS_ENV!r}\n"
        monkeypatch.setitem(BODY, stage, header + RECORD + BODY[stage])
    _write_notebooks(project / "notebooks")
    return project


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "kernels.log").read_text().splitlines()]


def _local(reuse: bool = True) -> dict:
    return {"kind": "local", "parallel": 1, "poll_s": 0.2, "reuse_kernels": reuse}


@pytest.mark.parametrize("reuse", [True, False])
def test_one_warm_kernel_runs_every_notebook_and_nothing_leaks(recording: Path, reuse: bool) -> None:
    root = recording
    assert run_sweep(_sweep(root, methods=["no_defense"], executor=_local(reuse))) == 0
    records = _records(root)
    assert [r["stage"] for r in records] == list(NOTEBOOKS)
    pids = {r["pid"] for r in records}
    assert len(pids) == (1 if reuse else len(NOTEBOOKS))
    assert not any(r["leaked"] for r in records)  # a variable of notebook A is undefined in notebook B
    assert {r["cwd"] for r in records} == {str(root)}
    progress = root / "runs" / "fake" / "_submitit" / "progress"
    jobs = {"data": "prepare", "canary_design": "prepare", "train": "no_defense_seed42"}
    jobs |= {"evaluate": "no_defense_seed42", "ablations": "analysis", "figures": "analysis"}
    assert {r["stage"]: r["progress"] for r in records} == {s: str(progress / f"{j}.json") for s, j in jobs.items()}
    # Every executed notebook is written where it always was, its cells counted from 1 as in a fresh kernel.
    executed = [root / "results" / "fake" / "notebooks" / NOTEBOOKS[s] for s in ("data", "canary_design")]
    executed += [root / "runs" / "fake" / "no_defense" / "seed42" / NOTEBOOKS[s] for s in ("train", "evaluate")]
    executed += [root / "results" / "fake" / "notebooks" / NOTEBOOKS[s] for s in ("ablations", "figures")]
    for path in executed:
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), path
    assert not any(psutil.pid_exists(pid) for pid in pids)  # no kernel outlives the sweep
    assert not list((root / "runs" / "fake" / "_submitit").glob("kernels/*.json"))


def test_a_failed_job_or_dead_kernel_is_replaced_and_the_sweep_goes_on(recording: Path) -> None:
    root = recording
    (root / "RAISE_canary").touch()
    (root / "EXIT_no_defense").touch()
    assert run_sweep(_sweep(root, methods=["canary", "no_defense"], executor=_local())) == 1
    status = json.loads((root / "results" / "fake" / "sweep_status.json").read_text())
    by_name = {job["name"]: job for job in status["jobs"]}
    assert by_name["prepare"]["ok"] and by_name["analysis"]["ok"]
    assert "planned failure in canary" in by_name["canary/seed42"]["error"]
    assert not by_name["no_defense/seed42"]["ok"] and "died" in by_name["no_defense/seed42"]["error"]
    pid = {(r["stage"], r["run"]): r["pid"] for r in _records(root)}
    assert pid["data", None] == pid["canary_design", None] == pid["train", "canary"]  # one kernel, two jobs
    assert pid["train", "no_defense"] != pid["train", "canary"]  # after a failed job: a fresh kernel
    assert pid["ablations", None] == pid["figures", None] != pid["train", "no_defense"]  # after a dead one too
    assert not any(psutil.pid_exists(p) for p in pid.values())


def test_the_pool_shares_kernels_only_between_jobs_of_one_kind_and_retires_them(tmp_path: Path) -> None:
    pool = KernelPool(tmp_path / "kernels", size=2, max_jobs=2)
    env = dict(os.environ)
    try:
        a = pool.lend("python3", str(tmp_path), env)
        pool.take_back(a, ok=True)  # it answers: kept
        b = pool.lend("python3", str(tmp_path), {**env, "OMP_NUM_THREADS": "1"})
        c = pool.lend("python3", str(tmp_path), env)
        assert b.connection_file != a.connection_file == c.connection_file
        first, second = (lease.kernel.km.provisioner.pid for lease in (a, b))
        pool.take_back(c, ok=True)  # its second job: retired (max_jobs)
        pool.take_back(b, ok=False)  # a failed job: retired
        assert pool.kernels == [] and not psutil.pid_exists(first) and not psutil.pid_exists(second)
        d = pool.lend("python3", str(tmp_path), env)
        pool.take_back(d, ok=True)
        e = pool.lend("python3", str(tmp_path / "kernels"), env)  # another working directory
        pool.take_back(e, ok=True)
        f = pool.lend("python3", str(tmp_path), {**env, "X": "1"})  # two alive already: an idle one goes
        assert len(pool.kernels) == 2 and d.kernel not in pool.kernels and f.kernel in pool.kernels
        pids = pool.pids()
    finally:
        pool.close()
    assert pool.kernels == [] and not any(psutil.pid_exists(p) for p in pids)


def test_jobs_differing_only_in_their_progress_file_share_a_kernel() -> None:
    one = Job("a", [], "/w", env={"OMP_NUM_THREADS": "1", PROGRESS_ENV: "/p/a.json"})
    two = Job("b", [], "/w", env={"OMP_NUM_THREADS": "1", PROGRESS_ENV: "/p/b.json"})
    assert kernel_env(one) == kernel_env(two)
    assert PROGRESS_ENV not in kernel_env(one) and kernel_env(one)["OMP_NUM_THREADS"] == "1"
    assert kernel_env(one)["CUDA_VISIBLE_DEVICES"] == ""  # as submitit's local executor starts a job without GPUs


@pytest.mark.slow
def test_a_borrowed_kernel_gives_each_notebook_what_a_fresh_kernel_would(tmp_path: Path) -> None:
    """torch's thread count, the global random generators, the environment, warnings already shown: what a
    notebook could change and the next one read."""

    def notebook(name: str, code: str) -> Path:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(code)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / name)
        return tmp_path / name

    report = "print(json.dumps([torch.get_num_threads(), torch.rand(1).item(), random.random(), os.environ.get('X')]))"
    changes = notebook(
        "changes.ipynb",
        "import json, os, random, warnings, torch\n"
        + report
        + "\ntorch.set_num_threads(torch.get_num_threads() + 1); torch.manual_seed(0); random.seed(0)\n"
        "os.environ['X'] = '1'; warnings.warn('shown in every notebook')",
    )
    reads = notebook(
        "reads.ipynb",
        "import json, os, random, warnings, torch\n" + report + "\nwarnings.warn('shown in every notebook')",
    )
    seeded = notebook(
        "seeded.ipynb", "import torch, random\ntorch.manual_seed(0); random.seed(0)\n" + "import json, os\n" + report
    )
    pool = KernelPool(tmp_path / "kernels", size=1)
    lease = pool.lend("python3", str(tmp_path), {k: v for k, v in os.environ.items() if k != "X"})
    km = BorrowedKernelManager(lease.connection_file)
    outputs = []
    try:
        for i, path in enumerate([changes, reads, seeded]):
            prepare_kernel(km, str(tmp_path), str(tmp_path / f"progress{i}.json"), timeout=120)
            pm.execute_notebook(path, tmp_path / f"out{i}.ipynb", kernel_name="python3", progress_bar=False, km=km)
            km.close_clients()
            outputs.append(nbformat.read(tmp_path / f"out{i}.ipynb", as_version=4).cells[0].outputs)
    finally:
        pool.take_back(lease, ok=True)
        pool.close()
    first, second, third = (json.loads(out[0]["text"].splitlines()[0]) for out in outputs)
    assert second[0] == first[0]  # torch's threads as its import left them
    assert second[3] is None  # the environment the kernel started with
    assert second[1] != third[1] and second[2] != third[2]  # torch's and Python's generators not left seeded
    assert any("shown in every notebook" in o.get("text", "") for o in outputs[1])


def test_a_kernel_the_pool_cannot_start_leaves_the_job_to_start_its_own(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    from canary_lib.sweep import _Runner, load_sweep

    class Broken:
        def lend(self, *args: object) -> None:
            raise RuntimeError("no such kernel")

    runner = _Runner(load_sweep(_sweep(project, executor=_local())), project / "runs")
    assert runner.pool is not None
    runner.pool = Broken()
    job = Job("a", [], str(project))
    assert runner._lend_kernel(job) is None and runner.leases == {}
    assert (
        "a: no pooled kernel (RuntimeError: no such kernel); its notebooks start their own" in capsys.readouterr().out
    )
    assert _Runner(load_sweep(_sweep(project, executor={**_local(), "gpus": [0]})), project / "runs").pool is None
    assert _Runner(load_sweep(_sweep(project, executor=_local(reuse=False))), project / "runs").pool is None
