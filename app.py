"""Starts mT5 Studio (the file a Hugging Face Space runs)."""
import sys

from app.main import main

if __name__ == "__main__":
    sys.exit(main())
