"""The source checkout these tools belong to: where their default configs are."""

import os

__all__ = ["REPO", "CONFIGS"]

#: The checkout's root folder (the one holding tools/ and configs/).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The checkout's configs/ folder.
CONFIGS = os.path.join(REPO, "configs")
