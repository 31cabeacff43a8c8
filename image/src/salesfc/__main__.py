"""`python -m salesfc` is the CLI; torchrun starts training workers this way (`torchrun -m salesfc train`)."""

from salesfc.cli import main

if __name__ == "__main__":
    main()
