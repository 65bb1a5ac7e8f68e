"""Console scripts: argparse -> config -> one call into ``offline``, ``bringup`` or
``onboard`` -> print. No tool imports another tool (``common`` is their shared helper)."""
