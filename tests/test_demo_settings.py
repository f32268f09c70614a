"""The demo's settings on a fresh checkout: the filesystem broker's folders exist as soon as the
settings are imported, so ``celery -A project worker`` comes up (and consumes) without
``scripts/demo`` having made them first.

Both run in subprocesses with ``DJANGO_VAR_DIR`` pointing at an empty temp dir and no
``CELERY_BROKER_URL``, exactly as a new user's shell would be.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CELERY = Path(sys.executable).with_name("celery")
FOLDERS = ("out", "processed", "control")

pytestmark = pytest.mark.once  # the demo's own SQLite and broker folders, in a temp dir


def fresh_env(var_dir):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERY_", "DATABASE_URL", "DJANGO_", "OPENAI_DJANGO"))}
    env.update(DJANGO_VAR_DIR=str(var_dir), DJANGO_SETTINGS_MODULE="project.settings",
               PYTHONPATH=str(ROOT))
    return env


def run_python(code, env, cwd):
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_importing_the_settings_makes_the_broker_folders(tmp_path):
    var_dir = tmp_path / "var"  # does not exist yet: a fresh checkout has no var/ either
    env = fresh_env(var_dir)
    code = ("import json; from project import settings as s; "
            "print(json.dumps([s.CELERY_BROKER_URL, s.CELERY_BROKER_TRANSPORT_OPTIONS]))")
    done = run_python(code, env, tmp_path)
    assert done.returncode == 0, done.stderr
    import json

    url, options = json.loads(done.stdout.strip().splitlines()[-1])
    assert url == "filesystem://"
    for name in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        folder = Path(options[name])
        assert folder.is_dir(), name
        assert var_dir in folder.parents
    assert sorted(p.name for p in (var_dir / "broker").iterdir()) == sorted(FOLDERS)
    # Idempotent: a second import over existing folders is fine too.
    again = run_python(code, env, tmp_path)
    assert again.returncode == 0, again.stderr


def test_celery_worker_comes_up_on_a_fresh_var_dir(tmp_path):
    var_dir = tmp_path / "var"
    env = fresh_env(var_dir)
    log_path = tmp_path / "worker.log"
    queue = f"demo-settings-{uuid.uuid4().hex[:8]}"
    command = [str(CELERY), "-A", "project", "worker", "--pool", "solo", "--loglevel", "INFO",
               "-Q", queue, "-n", f"{queue}@%h", "--without-mingle", "--without-gossip"]
    with log_path.open("wb") as log:
        worker = subprocess.Popen(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = wait_for(log_path, worker, "ready.", timeout=45)
        # Send a message through the same folders: the worker receives it (the task name is
        # unknown to it on purpose, so nothing runs against a database this dir does not have).
        send = ("from project.celery import app; "
                f"app.send_task('demo_settings.probe', queue={queue!r})")
        sent = run_python(send, env, tmp_path)
        assert sent.returncode == 0, sent.stderr
        text = wait_for(log_path, worker, "demo_settings.probe", timeout=20)
        assert worker.poll() is None, text
        assert "FileNotFoundError" not in text, text
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    assert (var_dir / "broker" / "out").is_dir()


def wait_for(log_path, process, needle, timeout):
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if needle in text:
            return text
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"worker log has no {needle!r} (exit {process.poll()}):\n{text[-3000:]}")
