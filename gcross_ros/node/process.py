"""The segmentation node as a child process, for the demo, the node benchmark and the node tests.

``start_node_process`` runs ``python -m gcross_ros.node.segment_node --ros-args --params-file FILE ...`` with
its output in a log file; ``stop_node_process`` asks it to stop (SIGTERM, which rclpy turns into a clean
shutdown), waits, kills it if it does not end in time, and closes the log.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Mapping, Optional, Sequence, Tuple


def start_node_process(params_file, log_path, ros_args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
                       cwd=None) -> Tuple[subprocess.Popen, IO]:
    """Start the node with a parameter file (plus ``-p``/``-r`` ``ros_args``); returns (process, log file)."""
    log = open(Path(log_path), "w")
    cmd = [sys.executable, "-m", "gcross_ros.node.segment_node", "--ros-args", "--params-file", str(params_file),
           *map(str, ros_args)]
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"),
                                stdout=log, stderr=subprocess.STDOUT)
    except BaseException:
        log.close()
        raise
    return proc, log


def stop_node_process(proc: subprocess.Popen, log: Optional[IO] = None, timeout_s: float = 15.0) -> Optional[int]:
    """Terminate, wait up to ``timeout_s``, then kill; close ``log``. Returns the exit status."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode
    finally:
        if log is not None:
            log.close()
