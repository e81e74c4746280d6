"""Command-line tools shipped with the package (demo, benchmark, replay)."""
