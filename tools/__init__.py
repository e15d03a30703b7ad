"""Repository tools run from the checkout (``python -m tools.NAME``); no part of the installed package."""
