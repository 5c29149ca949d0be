#!/usr/bin/env bash
# One entry point for a fresh machine (Python 3.10+ and the package registries).
#   ./run.sh demos   set up .venv, then execute every demo notebook, rewriting it in place
#   ./run.sh test    set up .venv, then run the whole test suite
#   ./run.sh bench   set up .venv, then run the side-by-side benchmarks
#   ./run.sh lab     set up .venv (plus JupyterLab), then open the notebooks interactively
#   ./run.sh docs    set up .venv, then build the API reference into build/docs
#   ./run.sh setup   only set up .venv
#   ./run.sh mutants set up .venv, then run the mutation tests (tools/mutate.py; slow, not CI)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv
SEED_STN_DIR=$VENV/seed-stn   # the seed's `stn` package, kept apart: it shares our module's name

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e ".[test]"
        "$VENV/bin/python" -m pip install -q --no-deps --upgrade --target "$SEED_STN_DIR" stn==1.0.1
        touch "$stamp"
    fi
    export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
    export SEED_STN_DIR
}

notebooks() {
    ls -1 *.ipynb
}

case "${1:-}" in
    setup)
        setup ;;
    demos)
        setup
        notebooks | while read -r nb; do
            echo "== executing $nb"
            "$VENV/bin/python" -m tests.nbrun --inplace "$nb"
        done ;;
    test)
        setup
        shift
        "$VENV/bin/python" -m pytest -n 2 "$@" ;;
    bench)
        setup
        shift
        "$VENV/bin/python" -m pip install -q -e ".[bench]"
        "$VENV/bin/python" benchmarks/bench.py "$@" ;;
    docs)
        setup
        "$VENV/bin/python" -m sphinx -W -n -q -b html docs/reference build/docs
        echo "API reference: build/docs/index.html" ;;
    mutants)
        setup
        shift
        "$VENV/bin/python" tools/mutate.py "$@" ;;
    lab)
        setup
        shift
        "$VENV/bin/python" -m pip install -q jupyterlab
        "$VENV/bin/python" -m jupyter lab "$@" ;;
    *)
        echo "usage: ./run.sh {demos|test|bench|docs|mutants|lab|setup} [args]" >&2
        exit 2 ;;
esac
