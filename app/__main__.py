"""`python -m app batch ...`: the app's command line (app.cli). The app itself starts with `python app.py`."""
import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
