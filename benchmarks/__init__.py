"""Commtunnel benchmarks: each figure beside a baseline measured in the same run.

Run them all (about 2-3 minutes on a 2-core machine)::

    .venv/bin/python -m benchmarks            # full run, one JSON object on stdout
    .venv/bin/python -m benchmarks --quick    # shorter run
    .venv/bin/python -m benchmarks --only delivery

Profiles of the hot paths (pyinstrument)::

    .venv/bin/python -m benchmarks.profile --out /tmp/ct-profiles

See ``docs/performance.md`` for what the figures mean and the latest run.
"""
