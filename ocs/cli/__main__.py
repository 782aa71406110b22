"""`python -m ocs.cli` runs ocsctl."""

from . import main

if __name__ == "__main__":
    main()
