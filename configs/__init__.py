"""The settings files `--preset NAME` reads; installed as the package gencli.presets."""
