"""`python -m doctor.explain PATH ...`"""
import sys

from doctor.explain.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
