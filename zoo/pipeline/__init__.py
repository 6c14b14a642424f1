"""Ray and MLflow pieces the jobs are made of (docs/architecture.md has the map). Import the module you
need; this package imports nothing heavy, so that importing one piece does not start Ray or MLflow."""

from zoo.errors import JobError

__all__ = ["JobError"]
