"""Loaded at interpreter start when tests/hooks is on PYTHONPATH (tests/killpoints.py `env`):
installs the test's stop points in this process before the command runs."""
import os
import sys

if os.environ.get("LESA_BENCH_TEST_KILL_AT"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import killpoints

    killpoints.install(os.environ[killpoints.ENV])
    sys.path.pop(0)
