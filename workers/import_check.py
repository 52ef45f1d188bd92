"""`python -m workers.import_check`: import a predictor the way a worker does, in a process of its own.

The supervisor and `replica validate` run this before serving, so a predictor that does not import stops
start-up with one line (exit status 2) instead of a worker boot loop, and TensorFlow or onnxruntime never
load in the supervisor. It reads the parsed spec (JSON, replica/spec_codec.py) on stdin, and on failure prints one
line naming the problem and the place in the user's file.
"""

from __future__ import annotations

import sys
import traceback


def check(api) -> str | None:
    """Import the predictor class of `api`; return None, or one line saying why it cannot be used."""
    from workers.predictor import PredictorError, load_predictor_class

    try:
        load_predictor_class(api)
    except PredictorError as e:
        return str(e)
    except BaseException as e:  # noqa: BLE001 - whatever the user's module raises at import
        where = ""
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(api.predictor.path)]
        if frames:
            where = f" (line {frames[-1].lineno} of {api.predictor.path.name})"
        elif isinstance(e, SyntaxError) and e.lineno:
            where = f" (line {e.lineno} of {api.predictor.path.name})"
        reason = f"{type(e).__name__}: {e}".replace("\n", " ")
        return f"importing {api.predictor.path} failed{where}: {reason}"
    return None


def main() -> int:
    from replica.spec_codec import spec_from_json

    api = spec_from_json(sys.stdin.buffer.read())
    problem = check(api)
    if problem is not None:
        print(problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
