"""The one error every job prints as a line and exits 2 on: bad input, said before any compute."""


class JobError(ValueError):
    """Bad input to a job (teachers, images, sets, options); the message says what to fix. Raised before
    any compute starts; every job prints it as one line and exits with status 2."""
