"""Execute a notebook headless with nbclient.

    python -m tests.nbrun [--inplace] [--timeout S] NOTEBOOK.ipynb

With --inplace the executed notebook (outputs and figures) replaces the file,
which is how the committed notebooks are produced (`./run.sh demos`). The test
suite runs the notebooks with SPATIAL_DEMO_QUICK=1 in the environment, which
the kernel inherits: notebooks that read it train on less data for fewer
epochs.
"""
import argparse
import os
import re
import sys
import time

import nbformat
from nbclient import NotebookClient


# TensorFlow's C++ start-up log (oneDNN, CUDA probing, XLA service) goes to
# stderr through absl and ignores TF_CPP_MIN_LOG_LEVEL in recent releases.
# It says nothing to a reader, so it is dropped from the saved outputs.
_TF_LOG_LINE = re.compile(r"^(?:[IWE]\d{4} [\d:. ]+\s+\d+ \S+:\d+\]|WARNING: All log messages before absl"
                          r"|To enable the following instructions|This TensorFlow binary is optimized)")


def _drop_tf_log_lines(nb):
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = [l for l in out["text"].splitlines(keepends=True)
                         if not _TF_LOG_LINE.match(l)]
                if not "".join(lines).strip():
                    continue
                out["text"] = "".join(lines)
            kept.append(out)
        cell["outputs"] = kept


def execute(path, inplace=False, timeout=900, out_path=None):
    """Runs every cell of `path` in a fresh kernel; raises on the first error."""
    nb = nbformat.read(path, as_version=4)
    workdir = os.path.dirname(os.path.abspath(path))
    # coalesce_streams: a cell's stream outputs become one, with the text that
    # carriage returns and backspaces overwrite removed, as a notebook front end
    # shows it (Keras's progress bar redraws itself with them at every step).
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                            resources={"metadata": {"path": workdir}})
    start = time.time()
    client.execute()
    elapsed = time.time() - start
    _drop_tf_log_lines(nb)
    if inplace:
        nbformat.write(nb, path)
    elif out_path:
        nbformat.write(nb, out_path)
    return nb, elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook")
    parser.add_argument("--inplace", action="store_true")
    parser.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args(argv)
    _, elapsed = execute(args.notebook, inplace=args.inplace, timeout=args.timeout)
    print(f"{args.notebook}: executed in {elapsed:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
