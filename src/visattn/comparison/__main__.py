"""The subprocesses of a comparison: ``python -m visattn.comparison train RUN_DIR THREADS`` (a training
run, ``jobs > 1``) and ``python -m visattn.comparison peak-memory THREADS`` (an entry's peak training
memory), each with its config on stdin."""
import sys

from .cost import peak_memory_main
from .runner import worker_main

if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    sys.exit({"train": worker_main, "peak-memory": peak_memory_main}[command](*arguments))
