"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``, ``nox -s serve``.

``nox`` alone runs lint, typecheck and tests. Virtual environments are kept
between runs (``reuse_venv``); ``nox -R`` skips reinstalling as well.
Arguments after ``--`` go to the tool: ``nox -s tests -- -m "not slow" -x``.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "tests"]

PYTHON = "3.11"


@nox.session(python=PYTHON)
@nox.parametrize("backend", ["sqlite", "postgresql"])
def tests(session: nox.Session, backend: str) -> None:
    """Run the whole test suite (slow subprocess tests included) on one backend.

    ``nox -s tests`` runs both; ``nox -s "tests(backend='postgresql')"`` one.
    PostgreSQL is the server at ``COMMTUNNEL_TEST_PG`` (default
    ``postgresql://127.0.0.1:5432/test``).
    """
    session.install("-e", ".[test]")
    session.run("pytest", "--backend", backend, *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff: lint rules and formatting (check only)."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/ (settings in pyproject.toml)."""
    session.install("-e", ".[http]", "mypy>=1.10")
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run ``commtunnel serve`` (arguments after ``--`` are passed to it)."""
    session.install("-e", ".[http]")
    session.run("commtunnel", "serve", *session.posargs)
