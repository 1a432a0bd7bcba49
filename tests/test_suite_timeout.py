"""The suite guards itself: a test that hangs fails (pytest-timeout) instead of blocking CI."""
import subprocess
import sys


def test_every_test_has_a_time_limit(pytestconfig):
    # Generous for the slowest test (about 60 s, test_e2e_jobs' walltime test), far below CI's limit.
    assert 300 <= float(pytestconfig.getini("timeout")) <= 900


def test_a_hanging_test_fails_instead_of_blocking(tmp_path):
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hangs():\n    time.sleep(300)\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "timeout=1", "test_hang.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Timeout" in run.stdout and "1 failed" in run.stdout
