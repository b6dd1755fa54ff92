"""Start a multi-process run on this machine: N copies of a command, each with the environment of
`parallel.DISTRIBUTED_ENV` (a coordinator on 127.0.0.1 at a free port, the process count, its index) and
its output in LOGDIR/process_<i>.log.

    python -m jetjax.launch --processes 2 --logdir runs/two -- python -m jetjax.main --config ... --workdir runs/two

If a process fails, the others are given `grace` seconds to end on their own (JAX's coordination service
stops them once the failed one misses its heartbeats: JAX_HEARTBEAT_TIMEOUT_SECONDS), then killed, and the
launcher fails naming the process, its exit code and the tail of its log. On a cluster use one command per
node instead (SLURM: see the README section on multi-process runs).
"""
import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


class ProcessFailed(RuntimeError):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command, processes, logdir, heartbeat_timeout=100, env=None):
    """The started processes (subprocess.Popen) of `command` (a list of arguments)."""
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    common = {**os.environ, **(env or {}), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
              "JAX_NUM_PROCESSES": str(processes), "JAX_HEARTBEAT_TIMEOUT_SECONDS": str(heartbeat_timeout)}
    started = []
    for index in range(processes):
        with open(logdir / f"process_{index}.log", "w") as log:
            started.append(subprocess.Popen(command, env={**common, "JAX_PROCESS_ID": str(index)}, stdout=log,
                                            stderr=subprocess.STDOUT))
    return started


def log_tail(logdir, index, lines=15):
    text = (Path(logdir) / f"process_{index}.log").read_text(errors="replace").splitlines()
    return "\n".join(f"  | {line}" for line in text[-lines:])


def wait(started, logdir, timeout, grace=30):
    """Wait for every process; raise ProcessFailed (naming the first failed process, or a timeout) after
    ending all of them."""
    deadline, failed, timed_out = time.monotonic() + timeout, None, False
    while any(p.poll() is None for p in started):
        now = time.monotonic()
        if failed is None:
            failed = next((i for i, p in enumerate(started) if p.poll() not in (None, 0)), None)
            if failed is not None:
                deadline = min(deadline, now + grace)
        if now > deadline:
            timed_out = failed is None
            for p in started:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            break
        time.sleep(0.1)
    codes = [p.returncode for p in started]
    if failed is None and all(code == 0 for code in codes):
        return
    first = failed if failed is not None else next(i for i, c in enumerate(codes) if c != 0)
    reason = f"the run exceeded {timeout} s" if timed_out else f"process {first} exited with code {codes[first]}"
    raise ProcessFailed(f"{reason}; exit codes of processes 0..{len(codes) - 1}: {codes} (negative: killed by "
                        f"that signal). Last lines of {Path(logdir) / f'process_{first}.log'}:\n"
                        f"{log_tail(logdir, first)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--logdir", default="runs/launch")
    parser.add_argument("--timeout", type=float, default=7 * 24 * 3600, help="seconds for the whole run")
    parser.add_argument("--heartbeat-timeout", type=int, default=100)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command of every process")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- python -m jetjax.main --config configs/quickstart.py")
    started = start(command, args.processes, args.logdir, args.heartbeat_timeout)
    try:
        wait(started, args.logdir, args.timeout)
    except ProcessFailed as error:
        sys.exit(f"jetjax.launch: {error}")


if __name__ == "__main__":
    main()
