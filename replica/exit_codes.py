"""Exit codes shared by the gunicorn master's hooks and the supervisor that reads gunicorn's exit.

gunicorn's master halts when a worker exits with 3 (WORKER_BOOT_ERROR) or 4 (APP_LOAD_ERROR), and then exits with
that code itself. Those are common codes: a predictor's `load_model` calling `os._exit(3)`, or a library's
`exit(4)`, would halt every worker. The master compares a worker's code against its own attributes, and gunicorn's
worker exits with the attributes of its forked copy, so the replica sets codes of its own on the master (in
`on_starting`): gunicorn keeps their meaning for itself, and a user's exit is one worker's death, replaced.
"""

WORKER_BOOT_ERROR = 83
APP_LOAD_ERROR = 84
