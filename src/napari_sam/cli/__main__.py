"""``python -m napari_sam.cli``."""

import sys

from napari_sam.cli import main

sys.exit(main())
