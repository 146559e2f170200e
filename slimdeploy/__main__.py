"""`python -m slimdeploy ...` is the `slimdeploy` command."""

from slimdeploy.cli import main

if __name__ == "__main__":
    main()
