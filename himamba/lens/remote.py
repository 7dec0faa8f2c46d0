"""SGLang 0.5.23 in its own environment, reached through a subprocess that answers in JSON.

SGLang 0.5.11 (which ``make differential`` installs beside himamba) and 0.5.23 cannot share one
environment, so ``make sglang-0.5.23`` builds ``.venv-sglang-0.5.23`` (0.5.23, its pinned CPU
set, and this himamba). :func:`replay_remote` starts that environment's Python on
``python -m himamba.lens.worker``, sends the request on standard input and reads one JSON answer
(a replay: the recorder's initial snapshot and steps, which already
serialise). Every way this can go wrong comes back as an exception naming the version, never a
hang: the environment missing or SGLang not importable there → :class:`UpstreamUnavailable`; an
upstream exception, a crash or no answer within ``timeout`` seconds → :class:`UpstreamFailure`.
The environment is found at ``$HIMAMBA_SGLANG_0523_PYTHON`` or in the checkout beside the package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from himamba.differential.upstream import UpstreamUnavailable
from himamba.errors import UpstreamFailure

VERSION = "0.5.23"
ENV_DIR = ".venv-sglang-0.5.23"

__all__ = ["UpstreamFailure", "UpstreamUnavailable", "call", "probe", "replay_remote", "replay_remote_many",
           "replay_request", "unified_here"]


def unified_here() -> bool:
    """Whether SGLang 0.5.23 is installed in this very environment (nothing is imported)."""
    if importlib.util.find_spec("sglang") is None:
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang") == VERSION
    except PackageNotFoundError:
        return False


def env_python() -> Path:
    """The Python of the 0.5.23 environment."""
    override = os.environ.get("HIMAMBA_SGLANG_0523_PYTHON")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / ENV_DIR / "bin" / "python"


def worker_env() -> dict[str, str]:
    """The environment a process in the 0.5.23 environment runs with: offline (no model hub is
    ever asked), warnings quiet, this checkout first on the import path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return env


def call(request: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send ``request`` to the worker in the 0.5.23 environment; its answer (``ok`` true)."""
    python = env_python()
    if not python.exists():
        raise UpstreamUnavailable(f"SGLang {VERSION} is not installed: its environment {ENV_DIR} is missing; "
                                  f"run `make sglang-{VERSION}`")
    env = worker_env()
    try:
        done = subprocess.run([str(python), "-m", "himamba.lens.worker"], input=json.dumps(request), text=True,
                              capture_output=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise UpstreamFailure(f"SGLang {VERSION} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise UpstreamUnavailable(f"SGLang {VERSION}: its environment's Python cannot start ({exc})") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UpstreamFailure(f"SGLang {VERSION} worker exited with status {done.returncode}: {tail}")
    answer = json.loads(lines[-1])
    if answer.get("ok"):
        return answer
    kind = UpstreamUnavailable if answer.get("kind") == "unavailable" else UpstreamFailure
    raise kind(f"SGLang {VERSION}: {answer.get('message')}")


def replay_request(script: dict, core: str = "python", skip: tuple[str, ...] = ("lock", "unlock"),
                   host: bool = False) -> dict[str, Any]:
    """The worker's request to replay ``script`` on 0.5.23's ``core`` (with ``host``, on the cache
    with its host tier: :mod:`himamba.lens.unified_host`)."""
    request = {"what": "replay", "script": script, "core": core, "skip": list(skip)}
    return {**request, "host": True} if host else request


def replay_remote(script: dict, core: str = "python", skip: tuple[str, ...] = ("lock", "unlock"),
                  timeout: float = 120.0, host: bool = False) -> dict[str, Any]:
    """The replay of ``script`` on 0.5.23, run in its environment, as the dict of
    :meth:`himamba.lens.replay.Replay.to_dict` (``host``: see :func:`replay_request`)."""
    return call(replay_request(script, core, skip, host), timeout)["replay"]


def replay_remote_many(scripts: list[dict], core: str = "python", skip: tuple[str, ...] = ("lock", "unlock"),
                       timeout: float = 240.0) -> list[dict[str, Any]]:
    """:func:`replay_remote` of several scripts with one start of the environment."""
    requests = [replay_request(s, core, skip) for s in scripts]
    answers = call({"what": "batch", "requests": requests}, timeout)["answers"]
    for a in answers:
        if not a.get("ok"):
            kind = UpstreamUnavailable if a.get("kind") == "unavailable" else UpstreamFailure
            raise kind(f"SGLang {VERSION}: {a.get('message')}")
    return [a["replay"] for a in answers]


def probe(timeout: float = 60.0) -> dict[str, Any]:
    """What the 0.5.23 environment has: its SGLang version and which tree cores build there."""
    return call({"what": "probe"}, timeout)
