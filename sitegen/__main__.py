"""`python -m sitegen build ...` is `sitegen build ...`."""

from sitegen.cli import main

if __name__ == "__main__":
    main()
