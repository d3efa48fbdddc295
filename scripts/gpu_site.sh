# Sourced by the GPU scripts (gpu_session.sh, gpu_refine.sh): on a bare node (Python, torch, numpy,
# scipy, scikit-image; no network) put ase from the carried .gpu-wheels/ (a pure-Python wheel; make it
# with `pip download ase==3.29.0 --no-deps -d .gpu-wheels/`) and the checkout's src/ on PYTHONPATH.
# Expects $here (the checkout). The unpacked wheel goes to a temporary folder, not under OUT: what is
# there comes back.
site=$(mktemp -d)
if ! python -c "import ase" 2>/dev/null; then
  python -m zipfile -e "$(ls "$here"/.gpu-wheels/ase-*.whl | head -1)" "$site"
fi
export PYTHONPATH="$here/src:$site${PYTHONPATH:+:$PYTHONPATH}"
