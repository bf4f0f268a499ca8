"""A stand-in stage command for tests/test_forkserver.py: `main(argv)` does one small thing per verb."""
import os
import signal
import sys
import time


def main(argv: list[str]) -> int:
    verb, args = argv[0], argv[1:]
    if verb == "echo":
        print(" ".join(args))
        print("to stderr", file=sys.stderr)
    elif verb == "exit":
        return int(args[0])
    elif verb == "raise":
        raise RuntimeError("boom from the child")
    elif verb == "signal":
        os.kill(os.getpid(), signal.SIGKILL)
    elif verb == "where":
        print(os.getcwd(), os.environ.get(args[0], "<unset>"), os.getppid())
    elif verb == "stdin":
        print(sys.stdin.read().upper())
    elif verb == "sleep":
        print(os.getpid(), flush=True)
        time.sleep(float(args[0]))
    return 0
