"""`python -m hf_lite ...` (and `accelerate launch -m hf_lite ...`) is the `hf-lite` command."""

from hf_lite.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
