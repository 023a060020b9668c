"""`python -m app.archive migrate | run | retention --days N`: the archive's processes without the CLI's
imports (app.archive.commands). See docs/DESIGN.md § Archive.
"""

from app.archive.commands import main

main()
