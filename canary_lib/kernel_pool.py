"""Warm notebook kernels for a local sweep: started once, lent to one job at a time, reset before every notebook.

    pool = KernelPool(folder, size=2)                        # the sweep runner's (canary_lib.sweep._Runner)
    lease = pool.lend("python3", cwd, env)                   # a kernel for one job (started if none is idle)
    job.kernel_connection_file = lease.connection_file
    ...                                                      # the job, in its own process:
    km = BorrowedKernelManager(job.kernel_connection_file)
    prepare_kernel(km, cwd, progress_file, timeout)          # reset_kernel() in the kernel, then
    pm.execute_notebook(..., km=km)                          # papermill executes the notebook there
    km.close_clients()
    pool.take_back(lease, ok=outcome.ok)                     # back in the pool, or shut down

Every kernel a notebook starts imports torch, transformers, peft and pandas again (about 7 s of CPU on the
2-core machine), twice per run. A local sweep without GPUs hands out warm kernels instead: the pool owns them
(at most `size` at once), the job's process only attaches to one (`BorrowedKernelManager`: it never shuts it
down), and papermill still executes and writes every notebook. Kernels are shared only by jobs with the same
kernel name, working directory and environment (the per-job progress file, `PROGRESS_ENV`, apart).

What a notebook finds in a lent kernel is what a fresh kernel gives it, as far as the code depends on it:
`reset_kernel` runs before every notebook (the user namespace and the execution count reset, garbage
collected, the working directory and the kernel's environment restored, the progress variable set to the job's
file, Python's, numpy's and torch's global random generators reseeded from the OS as a new process seeds them,
torch's thread count put back to the one its first import had, torch's grad mode and default dtype reset,
matplotlib figures closed, warnings shown once shown again). Modules stay imported: that is the point. A kernel
is shut down when its job failed, when it died or stopped answering, and after `max_jobs` jobs (memory a
long-lived process keeps); every kernel when the sweep ends. No torch import here.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.manager import AsyncKernelManager, KernelManager

from canary_lib.job_progress import PROGRESS_ENV
from canary_lib.numerics import NATIVE_ENV, PINNED_ENV

HISTORY_ARGUMENT = "--HistoryManager.hist_file=:memory:"
"""What nbclient starts its kernels with: no IPython history database shared by concurrent kernels."""
HEALTH_TIMEOUT_S = 10.0
"""How long a kernel taken back may take to answer a kernel_info request before it is shut down."""


# ---------------------------------------------------------------------------------------------- the pool


@dataclass(eq=False)
class _Kernel:
    km: KernelManager
    key: tuple
    connection_file: Path
    log: Any
    jobs: int = 0
    lent: bool = False


@dataclass
class Lease:
    """One job's use of a pool kernel."""

    kernel: _Kernel

    @property
    def connection_file(self) -> str:
        return str(self.kernel.connection_file)


class KernelPool:
    """Kernels owned by this process (the sweep runner), lent to one job at a time.

    Args:
        folder: where the connection files, pid files and kernel logs go (created).
        size: most kernels alive at once (the sweep's `parallel`).
        max_jobs: jobs a kernel serves before it is shut down.
    """

    def __init__(self, folder: Path, size: int, max_jobs: int = 12) -> None:
        self.folder, self.size, self.max_jobs = Path(folder), size, max_jobs
        self.kernels: list[_Kernel] = []
        self.started = 0

    def lend(self, kernel_name: str, cwd: str, env: dict[str, str]) -> Lease:
        """An idle kernel with this name, working directory and environment, or a new one (not waited for: the
        job waits until it answers). With `size` kernels alive already, an idle one of another kind goes first.

        Raises:
            Exception: the kernel could not be started (no such kernel name, or not a Python kernel).
        """
        key = (kernel_name, str(cwd), frozenset(env.items()))
        for kernel in list(self.kernels):
            if kernel.lent or kernel.key != key:
                continue
            if kernel.km.is_alive():
                kernel.lent = True
                return Lease(kernel)
            self._retire(kernel, now=True)
        idle = [k for k in self.kernels if not k.lent]
        if len(self.kernels) >= self.size and idle:
            self._retire(idle[0])
        kernel = self._start(key, kernel_name, cwd, env)
        kernel.lent = True
        return Lease(kernel)

    def take_back(self, lease: Lease, ok: bool) -> None:
        """The job ended: keep its kernel for the next job, unless the job failed, the kernel died or does not
        answer, or it has served `max_jobs` jobs."""
        kernel = lease.kernel
        if kernel not in self.kernels:
            return
        kernel.lent = False
        kernel.jobs += 1
        if not ok or not _answers(kernel.km):
            self._retire(kernel, now=True)
        elif kernel.jobs >= self.max_jobs:
            self._retire(kernel)

    def pids(self) -> list[int]:
        """The live kernels' process ids."""
        return [_pid(k.km) for k in self.kernels]

    def close(self) -> None:
        """Shut down every kernel (the end of the sweep, or an error or interrupt in the runner)."""
        for kernel in list(self.kernels):
            self._retire(kernel, now=kernel.lent)

    def _start(self, key: tuple, kernel_name: str, cwd: str, env: dict[str, str]) -> _Kernel:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started += 1
        name = f"kernel-{os.getpid()}-{self.started}-{uuid.uuid4().hex[:8]}"
        km = KernelManager(kernel_name=kernel_name, connection_file=str(self.folder / f"{name}.json"))
        if km.kernel_spec is not None and km.kernel_spec.language.lower() != "python":
            raise RuntimeError(f"kernel {kernel_name!r} is not a Python kernel: it cannot be reset between jobs")
        # The kernel's own stdout and stderr (not the notebooks' outputs) go to a log beside its connection file,
        # as a job's kernel writes into the job's submitit log, not into the sweep's terminal.
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 (closed when the kernel is shut down)
        try:
            km.start_kernel(cwd=str(cwd), env=dict(env), extra_arguments=[HISTORY_ARGUMENT], stdout=log, stderr=log)
        except BaseException:
            log.close()
            raise
        pid = _pid(km)
        _write_pid_file(km.connection_file, pid)
        kernel = _Kernel(km, key, Path(km.connection_file), log)
        self.kernels.append(kernel)
        return kernel

    def _retire(self, kernel: _Kernel, now: bool = False) -> None:
        if kernel in self.kernels:
            self.kernels.remove(kernel)
        try:
            kernel.km.shutdown_kernel(now=now)
        except Exception:  # already gone: nothing to stop
            pass
        finally:
            kernel.log.close()
            pid_file(kernel.connection_file).unlink(missing_ok=True)


def _pid(km: KernelManager) -> int:
    provisioner: Any = km.provisioner
    return int(provisioner.pid)


def _answers(km: KernelManager) -> bool:
    """The kernel process runs and its shell answers a kernel_info request."""
    if not km.is_alive():
        return False
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=HEALTH_TIMEOUT_S)
        return True
    except (RuntimeError, TimeoutError):
        return False
    finally:
        kc.stop_channels()


def pid_file(connection_file: str | Path) -> Path:
    """Where the pool writes a kernel's process id and start time, beside its connection file."""
    return Path(connection_file).with_suffix(".pid.json")


def _write_pid_file(connection_file: str, pid: int) -> None:
    import psutil

    record = {"pid": pid, "create_time": psutil.Process(pid).create_time()}
    pid_file(connection_file).write_text(json.dumps(record))


def process_alive(pid: int, create_time: float | None = None) -> bool:
    """The process exists, is not a zombie (a kernel that died and its parent, the runner, has not reaped yet),
    and is the one that started at `create_time` (not a later process that got the same id)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > 1e-3:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---------------------------------------------------------------------------------------------- the borrower


class BorrowedKernelManager(AsyncKernelManager):
    """A kernel manager for a running kernel this process did not start (a pool kernel lent to the job).

    nbclient (through papermill's `km=`) then neither starts nor shuts down a kernel: it only connects clients
    (asynchronous ones, as with the manager it makes itself: it polls the kernel's liveness while it waits for
    output). Alive means the kernel's process runs (its pid from the pool's pid file); an interrupt is SIGINT to
    it; shutting down, restarting and cleaning up leave the kernel and its connection file to the pool."""

    def __init__(self, connection_file: str, **kwargs: Any) -> None:
        super().__init__(connection_file=connection_file, owns_kernel=False, **kwargs)
        self.load_connection_file()
        record = json.loads(pid_file(connection_file).read_text())
        self.kernel_pid, self.kernel_create_time = int(record["pid"]), float(record["create_time"])
        self._clients: list[Any] = []

    @property
    def has_kernel(self) -> bool:
        return True

    async def _async_is_alive(self) -> bool:
        return process_alive(self.kernel_pid, self.kernel_create_time)

    is_alive = _async_is_alive

    async def _async_interrupt_kernel(self) -> None:
        os.kill(self.kernel_pid, signal.SIGINT)

    interrupt_kernel = _async_interrupt_kernel

    async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """The pool's to do (when the job ends)."""

    shutdown_kernel = _async_shutdown_kernel

    async def _async_restart_kernel(self, now: bool = False, newports: bool = False, **kw: Any) -> None:
        raise RuntimeError("a pooled kernel is not restarted by the job that borrowed it")

    restart_kernel = _async_restart_kernel

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        self.close_clients()

    cleanup_resources = _async_cleanup_resources

    def cleanup_connection_file(self) -> None:
        """The connection file is the pool's."""

    def client(self, **kwargs: Any) -> Any:
        kc = super().client(**kwargs)
        self._clients.append(kc)
        return kc

    def blocking_client(self) -> Any:
        """A blocking client of the kernel (for code run outside nbclient), its liveness this manager's."""
        kc = BlockingKernelClient(connection_file=self.connection_file, parent=self)
        kc.load_connection_file()
        self._clients.append(kc)
        return kc

    def close_clients(self) -> None:
        """Stop the channels of every client this manager made (nbclient leaves them open on a kernel it does not
        own)."""
        while self._clients:
            try:
                self._clients.pop().stop_channels()
            except Exception:  # a client whose channels never started
                pass


class KernelResetError(RuntimeError):
    """The borrowed kernel did not answer, or reset_kernel failed in it."""


def prepare_kernel(km: BorrowedKernelManager, cwd: str, progress_file: str | None, timeout: float) -> None:
    """Before a notebook in a borrowed kernel: wait until it answers, then run `reset_kernel` in it (silently:
    no output, no execution count, nothing in its history).

    Raises:
        KernelResetError: the kernel did not answer within `timeout` seconds, or the reset raised.
    """
    module = "__import__('canary_lib.kernel_pool', fromlist=['reset_kernel'])"  # no name left in the namespace
    code = f"{module}.reset_kernel({str(cwd)!r}, {progress_file!r})"
    kc = km.blocking_client()
    kc.start_channels()
    try:
        try:
            kc.wait_for_ready(timeout=timeout)
            reply = kc.execute_interactive(code, silent=True, store_history=False, timeout=timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise KernelResetError(f"the pooled kernel (pid {km.kernel_pid}) did not answer: {exc}") from exc
        content = reply["content"]
        if content["status"] != "ok":
            error = f"{content.get('ename', content['status'])}: {content.get('evalue', '')}"
            raise KernelResetError(f"resetting the pooled kernel failed: {error}")
    finally:
        km.close_clients()


# ---------------------------------------------------------------------------------------------- in the kernel

_STATE: dict[str, Any] = {}
"""The kernel's own state across notebooks (this module stays imported when the user namespace is reset):
`environ`, the environment the kernel started with; `torch_threads`, torch's thread count after its first
import."""


def reset_kernel(cwd: str, progress_file: str | None) -> None:
    """Runs inside a pooled kernel before each notebook: what the notebook sees is what a fresh kernel gives it.

    Args:
        cwd: the job's working directory.
        progress_file: the job's progress file (`PROGRESS_ENV`), or None.
    """
    import gc
    import random

    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.reset(new_session=True)  # %reset -f, and the execution count starts at 1 again
    gc.collect()
    _restore_environ(progress_file)
    os.chdir(cwd)
    random.seed()  # from the OS, as a new process seeds it
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is None:
        _note_torch_threads_on_import()
    else:
        torch.seed()  # a new process's torch generators are seeded from the OS too
        if "torch_threads" in _STATE:
            torch.set_num_threads(_STATE["torch_threads"])
        torch.set_grad_enabled(True)
        torch.set_default_dtype(torch.float32)
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
    _show_warnings_again()


def _restore_environ(progress_file: str | None) -> None:
    """The environment the kernel started with, and the job's progress file. Once torch is imported, the CPU
    numerics variables stay as they are: torch runs with what they said at its import (canary_lib.numerics)."""
    start = _STATE.setdefault("environ", {k: v for k, v in os.environ.items() if k != PROGRESS_ENV})
    keep = {*PINNED_ENV, NATIVE_ENV} if "torch" in sys.modules else set()
    for name in set(os.environ) - set(start) - keep:
        del os.environ[name]
    for name, value in start.items():
        if name not in keep and os.environ.get(name) != value:
            os.environ[name] = value
    if progress_file:
        os.environ[PROGRESS_ENV] = progress_file


class _TorchThreadsWatcher(importlib.abc.MetaPathFinder):
    """Notes torch's thread count as the kernel's first `import torch` leaves it, before notebook code can change
    it: the count a fresh kernel gives every notebook (OMP_NUM_THREADS, or the machine's cores)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch":
            return None
        sys.meta_path.remove(self)  # once; the other finders find torch
        spec = importlib.util.find_spec(name)
        loader: Any = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_note(module: Any) -> None:
            exec_module(module)
            try:
                _STATE["torch_threads"] = int(module.get_num_threads())
            except Exception:  # never a reason for the import to fail
                pass

        loader.exec_module = exec_and_note
        return spec


def _note_torch_threads_on_import() -> None:
    if not any(isinstance(finder, _TorchThreadsWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TorchThreadsWatcher())


def _show_warnings_again() -> None:
    """A warning is shown once per place and process; a fresh kernel shows it in every notebook. Also
    canary_lib.numerics' once-per-process warning and transformers' `warning_once`."""
    import logging

    for module in list(sys.modules.values()):
        try:
            registry = vars(module).get("__warningregistry__")
        except TypeError:  # not a module
            continue
        if isinstance(registry, dict):
            registry.clear()
    numerics = sys.modules.get("canary_lib.numerics")
    if numerics is not None:
        numerics._warned = False  # type: ignore[attr-defined]
    for name in ("warning_once", "info_once"):
        cache_clear = getattr(getattr(logging.Logger, name, None), "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
