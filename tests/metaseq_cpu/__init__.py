"""Helpers to run the real metaseq on CPU in checks (never imported by optiml_plugin)."""
