"""Ray and MLflow pieces the jobs are made of (docs/architecture.md has the map). Import the module you
need; this package imports nothing, so that importing one piece does not start Ray or MLflow."""


class JobError(ValueError):
    """Bad input to a job (teachers, images, sets, options); the message says what to fix. Raised before
    any compute starts; every job prints it as one line and exits with status 2."""
