"""What a training process really used, seen from inside it.

`observer/site/sitecustomize.py` is put first on the child's PYTHONPATH by the runner; every Python
process of the experiment (train.sh's conda interpreter, DataLoader workers, helpers) then appends
what it opens, maps and connects to under the folder named by `OBSERVE_DIR_VAR`, one
`<pid>.jsonl` file per process lineage. `observer.collect` turns those lines into `needs.json`.

This package is standard library only and imports nothing else of the project: its site part runs
inside the user's interpreter, and the collector runs wherever the runner does.
"""
import os

#: folder the in-process observer writes to (one `<pid>.jsonl` per process)
OBSERVE_DIR_VAR = "MUTATION_OBSERVE_DIR"
#: the folder that holds our `sitecustomize.py` (and nothing else), for PYTHONPATH
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
